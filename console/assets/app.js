// Umbra console: plain JavaScript, no build step, no external requests.
// The token lives in sessionStorage and goes in the Authorization header of
// every request, the live feed included (read with fetch, not EventSource,
// so it is never in a URL). Every value from the server is put in the page
// as text (never as HTML).
'use strict';

const TOKEN_KEY = 'umbra.token';
const session = { token: sessionStorage.getItem(TOKEN_KEY) || '', role: '' };
let pageCleanup = [];

// ---- DOM helpers --------------------------------------------------------

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === undefined || kid === null || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

const $ = (sel, root = document) => root.querySelector(sel);
const main = () => $('#main');

function setMain(...kids) {
  const m = main();
  m.replaceChildren(...kids.filter(Boolean));
}

function field(label, input, hint) {
  const id = input.id || ('f-' + Math.random().toString(36).slice(2));
  input.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label, hint ? h('span', { class: 'hint' }, ' ' + hint) : null), input);
}

function toast(msg) {
  const t = $('#toast');
  t.textContent = msg;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 8000);
}

function fmtTime(s) {
  if (!s) return '—';
  const d = new Date(s);
  if (isNaN(d) || d.getFullYear() < 1971) return '—';
  const secs = Math.round((Date.now() - d.getTime()) / 1000);
  let rel;
  if (Math.abs(secs) < 60) rel = secs <= 1 ? 'just now' : secs + ' s ago';
  else if (Math.abs(secs) < 3600) rel = Math.round(secs / 60) + ' min ago';
  else if (Math.abs(secs) < 86400) rel = Math.round(secs / 3600) + ' h ago';
  else rel = d.toISOString().slice(0, 16).replace('T', ' ');
  return h('time', { datetime: d.toISOString(), title: d.toISOString() }, rel);
}

function badge(text, kind) { return h('span', { class: 'badge ' + kind }, text); }

function fmtBytes(n) {
  if (n < 1024) return n + ' B';
  if (n < 1 << 20) return (n / 1024).toFixed(1) + ' KiB';
  return (n / (1 << 20)).toFixed(1) + ' MiB';
}

// twoStep returns a button that asks to be pressed again to confirm (no
// modal dialogs: they trap neither focus nor tests well).
function twoStep(label, confirmLabel, run, cls = 'danger') {
  const b = h('button', { type: 'button', class: cls }, label);
  let armed = false;
  b.addEventListener('click', async () => {
    if (!armed) {
      armed = true;
      b.textContent = confirmLabel;
      b.setAttribute('aria-live', 'polite');
      setTimeout(() => { if (armed) { armed = false; b.textContent = label; } }, 6000);
      return;
    }
    armed = false;
    b.textContent = label;
    b.disabled = true;
    try { await run(); } catch (e) { toast(describe(e)); } finally { b.disabled = false; }
  });
  return b;
}

// ---- API ----------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, body) { super(message); this.status = status; this.body = body; }
}

async function api(method, path, body) {
  const headers = { Authorization: 'Bearer ' + session.token };
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'The server cannot be reached (' + e.message + ').');
  }
  if (resp.status === 204) return null;
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) {
    if (resp.status === 401 && session.role) { signOut('Your token is no longer valid. Sign in again.'); }
    throw new ApiError(resp.status, (data && data.message) || resp.statusText || 'request failed', data);
  }
  return data;
}

// describe puts an API error in words for people.
function describe(e) {
  if (!(e instanceof ApiError)) return String(e.message || e);
  const m = e.message.replace(/\.$/, '');
  switch (e.status) {
    case 0: return e.message;
    case 400: return 'The server refused the request: ' + m + '.';
    case 401: return 'The token was refused: ' + m + '.';
    case 403: return 'Not allowed with this token: ' + m + '.';
    case 404: return 'Not found: ' + m + '.';
    case 409: return 'Conflict: ' + m + (e.body && e.body.rollout ? ' (rollout ' + e.body.rollout + ')' : '') + '.';
    case 413: return 'Too large: ' + m + '.';
    case 415: return 'Wrong content type: ' + m + '.';
    case 422: return 'The data did not check out: ' + m + '.';
    case 429: return 'Too many requests or live connections; try again in a few seconds.';
    case 503: return 'Not available right now: ' + m + '.';
  }
  return 'The server failed (' + e.status + '): ' + m + '.';
}

// ---- live feed ----------------------------------------------------------

// Live reads GET /v1/events with fetch (so the token goes in a header) and
// reconnects by itself; onReady runs at every (re)connection, for the page
// to reload what it shows.
class Live {
  constructor(query, onEvent, onReady) {
    this.query = query; this.onEvent = onEvent; this.onReady = onReady;
    this.stopped = false; this.delay = 1000;
    this.run();
  }
  stop() { this.stopped = true; if (this.ctl) this.ctl.abort(); }
  async run() {
    while (!this.stopped) {
      this.ctl = new AbortController();
      try {
        const resp = await fetch('/v1/events?' + this.query, {
          headers: { Authorization: 'Bearer ' + session.token, Accept: 'text/event-stream' },
          signal: this.ctl.signal, cache: 'no-store',
        });
        if (resp.status === 401) { signOut('Your token is no longer valid. Sign in again.'); return; }
        if (!resp.ok) throw new Error('status ' + resp.status);
        await this.read(resp.body.getReader());
      } catch (e) {
        if (this.stopped) return;
      }
      setLive(false);
      await new Promise(r => setTimeout(r, this.delay));
      this.delay = Math.min(this.delay * 2, 10000);
    }
  }
  async read(reader) {
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done || this.stopped) return;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i); buf = buf.slice(i + 2);
        let name = 'message', data = '';
        for (const line of block.split('\n')) {
          if (line.startsWith('event: ')) name = line.slice(7);
          else if (line.startsWith('data: ')) data += line.slice(6);
        }
        if (block.startsWith(':')) continue; // heartbeat
        if (name === 'ready') { setLive(true); this.delay = 1000; this.onReady(); continue; }
        if (name === 'dropped' || name === 'closing') return; // reconnect and reload
        try { this.onEvent(name, JSON.parse(data)); } catch (e) { /* a bad event is skipped */ }
      }
    }
  }
}

function setLive(on) {
  const el = $('#live');
  el.hidden = false;
  el.className = 'live ' + (on ? 'on' : 'off');
  el.textContent = on ? 'Live' : 'Disconnected — reconnecting';
}

function live(query, onEvent, onReady) {
  const l = new Live(query, onEvent, onReady);
  pageCleanup.push(() => l.stop());
  return l;
}

// throttle runs fn at most once per ms, trailing.
function throttle(fn, ms) {
  let timer = null, last = 0;
  const t = () => {
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, wait);
  };
  pageCleanup.push(() => clearTimeout(timer));
  return t;
}

// ---- sign-in ------------------------------------------------------------

function signOut(msg) {
  session.token = ''; session.role = '';
  sessionStorage.removeItem(TOKEN_KEY);
  for (const f of pageCleanup) f();
  pageCleanup = [];
  renderSignIn(msg);
}

function renderSignIn(msg) {
  $('#nav').hidden = true; $('#who').hidden = true; $('#signout').hidden = true; $('#live').hidden = true;
  // No name: were the form ever submitted natively, the token would not be
  // sent (let alone put in a URL).
  const input = h('input', { type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
  const err = h('p', { id: 'signin-error', class: 'error', role: 'alert' }, msg || '');
  const form = h('form', { class: 'signin panel', id: 'signin', method: 'post', action: '#' },
    h('h1', {}, 'Sign in to Umbra'),
    field('API token', input, '(name:secret — an operator or integrator token; `umbra token create`)'),
    err,
    h('button', { type: 'submit' }, 'Sign in'));
  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    err.textContent = '';
    session.token = input.value.trim();
    try {
      await signIn();
      sessionStorage.setItem(TOKEN_KEY, session.token);
      route();
    } catch (e) {
      session.token = ''; session.role = '';
      err.textContent = e instanceof ApiError && e.status === 401 ? 'This token was refused: it is unknown, revoked or mistyped.' : describe(e);
      input.focus();
    }
  });
  setMain(form);
  input.focus();
}

// signIn checks the token and learns its role: an operator may list tokens,
// an integrator may not.
async function signIn() {
  await api('GET', '/v1/devices?limit=1');
  try {
    await api('GET', '/v1/tokens');
    session.role = 'operator';
  } catch (e) {
    if (e.status !== 403) throw e;
    session.role = 'integrator';
  }
  $('#nav').hidden = false; $('#signout').hidden = false;
  const who = $('#who');
  who.hidden = false;
  who.textContent = session.token.split(':')[0] + ' (' + session.role + (session.role === 'integrator' ? ', read-only' : '') + ')';
}

const canWrite = () => session.role === 'operator';

function readOnlyNote() {
  return canWrite() ? null : h('p', { class: 'notice', id: 'readonly' }, 'Read-only: this is an integrator token, so nothing can be changed here.');
}

// ---- router -------------------------------------------------------------

function route() {
  for (const f of pageCleanup) f();
  pageCleanup = [];
  if (!session.role) { renderSignIn(); return; }
  const hash = location.hash.slice(1) || '/fleet';
  const [path, qs] = hash.split('?');
  const params = new URLSearchParams(qs || '');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.page === (parts[0] === 'device' ? 'fleet' : parts[0] === 'rollout' ? 'rollouts' : parts[0])) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const pages = {
    fleet: () => pageFleet(params),
    device: () => pageDevice(parts[1]),
    firmware: () => (parts[1] ? pageImage(parts[1]) : pageFirmware()),
    rollouts: () => pageRollouts(),
    rollout: () => pageRollout(parts[1]),
  };
  (pages[parts[0]] || pages.fleet)();
  main().focus({ preventScroll: true });
}

// ---- fleet --------------------------------------------------------------

const STATE_KIND = { failed: 'bad', updated: 'ok', downloading: 'warn', verifying: 'warn', installing: 'warn', rebooting: 'warn' };

function pageFleet(params) {
  const q = {
    selector: params.get('selector') || '', online: params.get('online') || '', firmware: params.get('firmware') || '',
    state: params.get('state') || '', q: params.get('q') || '',
  };
  let cursors = ['']; // cursor of each page seen
  const totals = h('div', { class: 'totals', id: 'totals', 'aria-label': 'Fleet totals' });
  const sel = h('input', { name: 'selector', value: q.selector, placeholder: 'hw=m2,region=eu', size: 18 });
  const online = h('select', { name: 'online' }, h('option', { value: '' }, 'any'), h('option', { value: 'true' }, 'online'), h('option', { value: 'false' }, 'offline'));
  online.value = q.online;
  const fw = h('select', { name: 'firmware', id: 'filter-firmware' }, h('option', { value: '' }, 'any'));
  const state = h('select', { name: 'state' }, ...['', 'failed', 'updating', 'updated', 'idle'].map(s => h('option', { value: s }, s || 'any')));
  state.value = q.state;
  const search = h('input', { name: 'q', type: 'search', value: q.q, placeholder: 'part of an ID', size: 14 });
  const form = h('form', { class: 'panel row', id: 'fleet-filters', role: 'search' },
    field('Labels', sel), field('Connection', online), field('Firmware', fw), field('Update state', state), field('Device ID', search),
    h('button', { type: 'submit' }, 'Filter'),
    h('button', { type: 'button', class: 'secondary', onclick: () => { location.hash = '#/fleet'; } }, 'Clear'));
  form.addEventListener('submit', ev => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const [k, el] of [['selector', sel], ['online', online], ['firmware', fw], ['state', state], ['q', search]]) {
      if (el.value.trim()) p.set(k, el.value.trim());
    }
    const next = '#/fleet' + (p.toString() ? '?' + p : '');
    if (location.hash === next) route(); else location.hash = next;
  });
  const status = h('p', { id: 'fleet-status', role: 'status', class: 'hint' }, 'Loading…');
  const tbody = h('tbody');
  const table = h('div', { class: 'table-wrap' }, h('table', { id: 'fleet-table' },
    h('caption', { class: 'hint', style: null }, ''),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Device'), h('th', { scope: 'col' }, 'Connection'),
      h('th', { scope: 'col' }, 'Firmware'), h('th', { scope: 'col' }, 'Update'), h('th', { scope: 'col', class: 'hide-narrow' }, 'Labels'),
      h('th', { scope: 'col', class: 'hide-narrow' }, 'Last report'))), tbody));
  const prev = h('button', { type: 'button', class: 'secondary', disabled: true }, 'Previous page');
  const next = h('button', { type: 'button', class: 'secondary', id: 'fleet-next', disabled: true }, 'Next page');
  const pageInfo = h('span', { class: 'hint' });
  setMain(h('h1', {}, 'Fleet'), totals, form, status, table, h('div', { class: 'pager' }, prev, next, pageInfo));

  let page = 0, nextCursor = '', loadedAt = 0;
  async function load() {
    const p = new URLSearchParams({ limit: '100' });
    for (const k of ['selector', 'online', 'firmware', 'state', 'q']) if (q[k]) p.set(k, q[k]);
    if (cursors[page]) p.set('cursor', cursors[page]);
    const t0 = performance.now();
    let l;
    try {
      l = await api('GET', '/v1/devices?' + p);
    } catch (e) {
      status.textContent = describe(e);
      status.className = 'error';
      return;
    }
    renderTotals(totals, l.totals, fw, q.firmware);
    tbody.replaceChildren(...l.devices.map(deviceRow));
    if (!l.devices.length) tbody.append(h('tr', {}, h('td', { colspan: 6 }, 'No device matches these filters.')));
    nextCursor = l.next;
    next.disabled = !l.next; prev.disabled = page === 0;
    const from = page * 100 + (l.devices.length ? 1 : 0);
    pageInfo.textContent = `${from}–${page * 100 + l.devices.length} of ${l.matched}`;
    status.className = 'hint';
    status.textContent = `${l.matched} device${l.matched === 1 ? '' : 's'} match` + (l.loading ? ' (the server is still loading the fleet)' : '');
    status.dataset.matched = l.matched;
    loadedAt = performance.now() - t0;
    main().dataset.fleetLoadMs = loadedAt.toFixed(1);
  }
  next.addEventListener('click', () => { cursors[page + 1] = nextCursor; page++; load(); });
  prev.addEventListener('click', () => { if (page > 0) { page--; load(); } });
  const reload = throttle(load, 1000);
  live('kinds=presence,shadow,deleted', reload, reload);
  load();
}

function renderTotals(el, t, fwSelect, chosen) {
  const tile = (id, n, label) => h('div', { class: 'total', id }, h('b', {}, String(n)), h('span', {}, label));
  el.replaceChildren(tile('total-devices', t.devices, 'devices'), tile('total-online', t.online, 'online'),
    tile('total-offline', t.offline, 'offline'), tile('total-failing', t.failing, 'failing'),
    tile('total-updating', t.updating, 'updating'),
    ...Object.entries(t.firmware || {}).sort((a, b) => b[1] - a[1]).slice(0, 8)
      .map(([v, n]) => tile('total-fw-' + v, n, v === '(none)' ? 'no version' : 'on ' + v)));
  const versions = Object.keys(t.firmware || {}).sort();
  const have = [...fwSelect.options].map(o => o.value);
  if (versions.join() !== have.slice(1).join()) {
    fwSelect.replaceChildren(h('option', { value: '' }, 'any'), ...versions.map(v => h('option', { value: v }, v)));
  }
  fwSelect.value = chosen || '';
}

function deviceRow(d) {
  const p = d.presence || {};
  const since = p.connected ? p.connected_at : p.disconnected_at;
  const fwState = d.firmware && d.firmware.state;
  return h('tr', { 'data-device': d.id },
    h('td', {}, h('a', { href: '#/device/' + encodeURIComponent(d.id) }, d.id), d.enrolled ? null : h('span', { class: 'hint' }, ' (not enrolled)')),
    h('td', {}, p.connected ? badge('online', 'ok') : badge('offline', 'muted'), ' ', since ? h('span', { class: 'hint' }, 'since ', fmtTime(since)) : null),
    h('td', {}, (d.firmware && d.firmware.version) || '—'),
    h('td', {}, fwState ? badge(fwState, STATE_KIND[fwState] || 'muted') : '—',
      d.firmware && d.firmware.error ? h('div', { class: 'hint' }, d.firmware.error) : null),
    h('td', { class: 'labels hide-narrow' }, Object.entries(d.labels || {}).map(([k, v]) => h('code', {}, k + '=' + v))),
    h('td', { class: 'hide-narrow' }, fmtTime(d.last_report)));
}

// ---- device -------------------------------------------------------------

function pageDevice(id) {
  const info = h('div', { id: 'device-info' }, 'Loading…');
  const shadowBox = h('div', { id: 'shadow' });
  const editor = h('textarea', { id: 'desired', rows: 8, 'aria-describedby': 'desired-hint' });
  const versionEl = h('span', { id: 'shadow-version' }, '—');
  const editMsg = h('div', { id: 'edit-msg', role: 'status' });
  let version = 0, dirty = false;
  editor.addEventListener('input', () => { dirty = true; });
  const editForm = h('form', { class: 'panel', id: 'edit-desired' },
    h('h2', {}, 'Edit desired state'),
    h('p', { class: 'hint', id: 'desired-hint' }, 'JSON merged into desired; set a key to null to remove it. Saved only if the shadow is still at version ', versionEl, '.'),
    field('Desired state', editor), editMsg,
    h('button', { type: 'submit', disabled: !canWrite() }, 'Save desired state'));
  editForm.addEventListener('submit', async ev => {
    ev.preventDefault();
    editMsg.replaceChildren();
    let desired;
    try { desired = JSON.parse(editor.value); } catch (e) {
      editMsg.replaceChildren(h('p', { class: 'notice bad' }, 'This is not valid JSON: ' + e.message));
      return;
    }
    try {
      const r = await api('POST', '/v1/devices/' + encodeURIComponent(id) + '/shadow', { state: { desired }, version });
      dirty = false;
      editMsg.replaceChildren(h('p', { class: 'notice' }, 'Saved: the shadow is now at version ' + r.version + '.'));
      await loadShadow(true);
    } catch (e) {
      if (e.status === 409) {
        const cur = await api('GET', '/v1/devices/' + encodeURIComponent(id) + '/shadow').catch(() => null);
        editMsg.replaceChildren(h('div', { class: 'notice bad', id: 'conflict' },
          h('p', {}, `Not saved: the shadow changed since you loaded it (you edited version ${version}` +
            (cur ? `, it is now at version ${cur.version}` : '') + '). Your edit is still in the box; here is the current document. Review it and save again.'),
          cur ? h('pre', {}, JSON.stringify(cur, null, 2)) : null));
        if (cur) { version = cur.version; versionEl.textContent = String(version); }
      } else {
        editMsg.replaceChildren(h('p', { class: 'notice bad' }, describe(e)));
      }
    }
  });
  const presenceLog = h('ul', { class: 'log', id: 'presence-log' });
  const rolloutLog = h('ul', { class: 'log', id: 'device-rollout-log' });
  const actions = h('div', { id: 'device-actions' });
  setMain(h('p', {}, h('a', { href: '#/fleet' }, '← Fleet')), h('h1', {}, 'Device ', h('code', {}, id)), readOnlyNote(),
    h('div', { class: 'grid' }, info, h('div', {}, actions,
      h('h2', {}, 'Presence history'),
      h('p', { class: 'hint' }, 'The latest connections and disconnections seen since the server started.'), presenceLog,
      h('h2', {}, 'Rollout failures, retries and rollbacks of this device'), rolloutLog)),
    h('h2', {}, 'Shadow'), shadowBox, editForm);

  async function loadInfo() {
    try {
      const l = await api('GET', '/v1/devices?id=' + encodeURIComponent(id));
      const d = l.devices[0];
      if (!d) { info.replaceChildren(h('p', { class: 'notice bad' }, 'No such device: it is neither enrolled nor has a shadow.')); return; }
      const p = d.presence || {};
      info.replaceChildren(h('h2', {}, 'Enrolment and presence'), h('dl', { class: 'kv' },
        h('dt', {}, 'Connection'), h('dd', { id: 'device-connection' }, p.connected ? badge('online', 'ok') : badge('offline', 'muted')),
        h('dt', {}, 'Connected at'), h('dd', {}, fmtTime(p.connected_at)),
        h('dt', {}, 'Disconnected at'), h('dd', {}, fmtTime(p.disconnected_at), p.disconnect_reason ? ' (' + p.disconnect_reason + ')' : ''),
        h('dt', {}, 'Enrolled'), h('dd', {}, d.enrolled ? fmtTime(d.enrolled_at) : 'no'),
        h('dt', {}, 'Certificate bound'), h('dd', {}, d.cert_bound ? 'yes' : 'no'),
        h('dt', {}, 'Labels'), h('dd', { class: 'labels' }, Object.entries(d.labels || {}).map(([k, v]) => h('code', {}, k + '=' + v)), Object.keys(d.labels || {}).length ? null : 'none'),
        h('dt', {}, 'Firmware'), h('dd', {}, (d.firmware.version || '—') + (d.firmware.state ? ' (' + d.firmware.state + ')' : ''), d.firmware.error ? ' — ' + d.firmware.error : ''),
        h('dt', {}, 'Last report'), h('dd', {}, fmtTime(d.last_report))));
      const hist = d.presence_history || [];
      presenceLog.replaceChildren(...(hist.length ? hist.map(c => h('li', {}, fmtTime(c.at), ' ', c.connected ? badge('connected', 'ok') : badge('disconnected', 'muted'),
        c.reason ? ' ' + c.reason : '')) : [h('li', {}, 'No change seen since the server started.')]));
      renderActions(d);
    } catch (e) {
      info.replaceChildren(h('p', { class: 'notice bad' }, describe(e)));
    }
  }
  async function loadShadow(replaceEditor) {
    try {
      const doc = await api('GET', '/v1/devices/' + encodeURIComponent(id) + '/shadow');
      // The lock stays at the version the edit started from: a change
      // made meanwhile makes the save a 409, never a silent overwrite.
      if (replaceEditor || !dirty) { version = doc.version; versionEl.textContent = String(version); }
      const st = doc.state || {};
      shadowBox.replaceChildren(h('div', { class: 'grid' },
        h('div', {}, h('h3', {}, 'Desired'), h('pre', { id: 'shadow-desired' }, JSON.stringify(st.desired || {}, null, 2))),
        h('div', {}, h('h3', {}, 'Reported'), h('pre', { id: 'shadow-reported' }, JSON.stringify(st.reported || {}, null, 2))),
        h('div', {}, h('h3', {}, 'Delta'), h('pre', { id: 'shadow-delta' }, JSON.stringify(st.delta || {}, null, 2)))),
        h('p', {}, 'Version ', h('b', { id: 'shadow-doc-version' }, String(doc.version)), ', updated ', fmtTime(doc.timestamp ? doc.timestamp * 1000 : 0)),
        h('details', {}, h('summary', {}, 'Metadata'), h('pre', {}, JSON.stringify(doc.metadata || {}, null, 2))));
      if (replaceEditor || !dirty) editor.value = JSON.stringify(st.desired || {}, null, 2);
      else if (doc.version !== version) editMsg.replaceChildren(h('p', { class: 'notice', id: 'changed-meanwhile' }, `The shadow changed while you were editing (now version ${doc.version}); saving will be refused so that you can review it.`));
    } catch (e) {
      if (e.status === 404) {
        version = 0; versionEl.textContent = 'none (no shadow yet)';
        shadowBox.replaceChildren(h('p', {}, 'This device has no shadow yet. Saving creates it.'));
        if (!dirty) editor.value = '{}';
      } else shadowBox.replaceChildren(h('p', { class: 'notice bad' }, describe(e)));
    }
  }
  async function renderActions(d) {
    if (!canWrite()) { actions.replaceChildren(); return; }
    const out = h('div', { id: 'action-result', role: 'status' });
    const fwSel = h('select', { id: 'assign-version' });
    api('GET', '/v1/firmware').then(l => fwSel.replaceChildren(...(l.images || []).map(i => h('option', { value: i.version }, i.version + (i.hw ? ' (' + i.hw + ')' : ''))))).catch(() => {});
    const assign = h('form', { class: 'row' }, field('Assign firmware version', fwSel), h('button', { type: 'submit' }, 'Assign'));
    assign.addEventListener('submit', async ev => {
      ev.preventDefault();
      try {
        await api('POST', '/v1/firmware/' + encodeURIComponent(fwSel.value) + '/assign', { device: id });
        out.replaceChildren(h('p', { class: 'notice' }, 'Firmware ' + fwSel.value + ' assigned: it is in the desired state now.'));
      } catch (e) { out.replaceChildren(h('p', { class: 'notice bad' }, describe(e))); }
    });
    actions.replaceChildren(h('h2', {}, 'Actions'), h('div', { class: 'actions' },
      d.enrolled ? twoStep('Rotate secret', 'Press again to rotate', async () => {
        const r = await api('POST', '/v1/devices/' + encodeURIComponent(id) + '/rotate');
        out.replaceChildren(h('div', { class: 'notice' }, h('p', {}, 'The new secret, shown only this once. The device must use it from now on:'),
          h('div', { class: 'secret', id: 'new-secret' }, r.secret)));
      }, 'secondary') : null,
      d.enrolled ? twoStep('Remove device', 'Press again to remove', async () => {
        await api('DELETE', '/v1/devices/' + encodeURIComponent(id));
        out.replaceChildren(h('p', { class: 'notice' }, 'Removed: its credentials no longer work.'));
        loadInfo();
      }) : null), assign, out);
  }
  const reloadShadow = throttle(() => loadShadow(false), 300);
  const reloadInfo = throttle(loadInfo, 1000);
  live('devices=' + encodeURIComponent(id) + '&kinds=shadow,delta,deleted,presence,rollout', (kind, ev) => {
    if (kind === 'presence') {
      reloadInfo();
    } else if (kind === 'rollout') {
      const e = ev.payload || {};
      if (e.device !== id) return;
      rolloutLog.prepend(rolloutEventItem(ev.rollout, e));
    } else { reloadShadow(); reloadInfo(); }
  }, () => { loadInfo(); loadShadow(false); loadRolloutEvents(); });
  // The device's events in the newest rollouts (the API has no per-device
  // event index; five rollouts' logs are read).
  async function loadRolloutEvents() {
    try {
      const rs = ((await api('GET', '/v1/rollouts')).rollouts || []).slice(0, 5);
      const items = [];
      for (const r of rs) {
        for (const e of (await api('GET', '/v1/rollouts/' + encodeURIComponent(r.id) + '/events')).events || []) {
          if (e.device === id) items.push([r.id, e]);
        }
      }
      items.sort((a, b) => new Date(b[1].time) - new Date(a[1].time));
      rolloutLog.replaceChildren(...(items.length ? items.slice(0, 20).map(([rid, e]) => rolloutEventItem(rid, e)) : [h('li', {}, 'None in the latest rollouts.')]));
    } catch (e) { rolloutLog.replaceChildren(h('li', { class: 'error' }, describe(e))); }
  }
  loadInfo(); loadShadow(true);
}

function rolloutEventItem(rid, e) {
  return h('li', {}, fmtTime(e.time), ' ', h('a', { href: '#/rollout/' + encodeURIComponent(rid) }, rid), ' ', e.kind,
    e.state ? ' ' + e.state : '', e.reason ? ': ' + e.reason : '');
}

// ---- firmware -----------------------------------------------------------

function pageFirmware() {
  const list = h('div', { id: 'firmware-list' }, 'Loading…');
  const upload = canWrite() ? uploadForm(() => load()) : null;
  setMain(h('h1', {}, 'Firmware'), readOnlyNote(), upload, h('h2', {}, 'Images'), list);
  async function load() {
    try {
      const l = await api('GET', '/v1/firmware');
      const imgs = l.images || [];
      if (!imgs.length) { list.replaceChildren(h('p', {}, 'No image uploaded yet.')); return; }
      list.replaceChildren(h('div', { class: 'table-wrap' }, h('table', { id: 'firmware-table' },
        h('thead', {}, h('tr', {}, ...['Version', 'Hardware', 'Size', 'SHA-256', 'Uploaded', ''].map(c => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, imgs.map(i => h('tr', { 'data-version': i.version },
          h('td', {}, h('a', { href: '#/firmware/' + encodeURIComponent(i.version) }, i.version)),
          h('td', {}, i.hw || 'any'), h('td', {}, fmtBytes(i.size)), h('td', {}, h('code', { title: i.sha256 }, i.sha256.slice(0, 12) + '…')),
          h('td', {}, fmtTime(i.created)),
          h('td', {}, canWrite() ? twoStep('Delete', 'Press again to delete', async () => {
            try { await api('DELETE', '/v1/firmware/' + encodeURIComponent(i.version)); load(); } catch (e) { toast(describe(e)); }
          }) : null)))))));
    } catch (e) { list.replaceChildren(h('p', { class: 'notice bad' }, describe(e))); }
  }
  load();
}

function uploadForm(done) {
  const version = h('input', { name: 'version', required: true, placeholder: '1.2.0', id: 'upload-version' });
  const hw = h('input', { name: 'hw', placeholder: 'm2 (optional)', id: 'upload-hw' });
  const notes = h('input', { name: 'notes', placeholder: 'optional', id: 'upload-notes' });
  const file = h('input', { type: 'file', name: 'file', required: true, id: 'upload-file' });
  const progress = h('progress', { max: 100, value: 0, id: 'upload-progress', 'aria-label': 'Upload progress' });
  const msg = h('div', { id: 'upload-msg', role: 'status' });
  const btn = h('button', { type: 'submit' }, 'Upload');
  const form = h('form', { class: 'panel', id: 'upload' }, h('h2', {}, 'Upload an image'),
    h('div', { class: 'row' }, field('Version', version), field('Hardware model', hw), field('Notes', notes)),
    field('Image file', file), progress, msg, btn);
  form.addEventListener('submit', ev => {
    ev.preventDefault();
    const f = file.files[0];
    if (!f) return;
    const p = new URLSearchParams({ version: version.value.trim() });
    if (hw.value.trim()) p.set('hw', hw.value.trim());
    if (notes.value.trim()) p.set('notes', notes.value.trim());
    const xhr = new XMLHttpRequest();
    xhr.open('POST', '/v1/firmware?' + p);
    xhr.setRequestHeader('Authorization', 'Bearer ' + session.token);
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    xhr.upload.addEventListener('progress', e => { if (e.lengthComputable) progress.value = Math.round(100 * e.loaded / e.total); });
    btn.disabled = true;
    msg.textContent = 'Uploading…';
    xhr.addEventListener('loadend', () => {
      btn.disabled = false;
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch { data = null; }
      if (xhr.status === 201) {
        progress.value = 100;
        msg.replaceChildren(h('p', { class: 'notice' }, 'Uploaded ' + data.version + ' (' + fmtBytes(data.size) + ', signed).'));
        form.reset();
        done();
      } else {
        msg.replaceChildren(h('p', { class: 'notice bad' }, xhr.status === 0 ? 'The upload failed: the connection was lost.' :
          describe(new ApiError(xhr.status, (data && data.message) || xhr.statusText, data))));
      }
    });
    xhr.send(f);
  });
  return form;
}

async function pageImage(v) {
  setMain(h('p', {}, h('a', { href: '#/firmware' }, '← Firmware')), h('h1', {}, 'Firmware ', h('code', {}, v)), h('div', { id: 'image' }, 'Loading…'));
  try {
    const i = await api('GET', '/v1/firmware/' + encodeURIComponent(v));
    $('#image').replaceChildren(h('dl', { class: 'kv' },
      h('dt', {}, 'Version'), h('dd', {}, i.version), h('dt', {}, 'Hardware'), h('dd', {}, i.hw || 'any'),
      h('dt', {}, 'Size'), h('dd', {}, fmtBytes(i.size) + ' (' + i.size + ' bytes)'), h('dt', {}, 'SHA-256'), h('dd', {}, h('code', {}, i.sha256)),
      h('dt', {}, 'Uploaded'), h('dd', {}, fmtTime(i.created)), h('dt', {}, 'Notes'), h('dd', {}, i.notes || '—')));
  } catch (e) { $('#image').replaceChildren(h('p', { class: 'notice bad' }, describe(e))); }
}

// ---- rollouts -----------------------------------------------------------

const ROLLOUT_KIND = { running: 'warn', paused: 'warn', succeeded: 'ok', failed: 'bad', aborted: 'bad', created: 'muted' };

function pageRollouts() {
  const list = h('div', { id: 'rollout-list' }, 'Loading…');
  setMain(h('h1', {}, 'Rollouts'), readOnlyNote(), canWrite() ? createForm() : null, h('h2', {}, 'All rollouts'), list);
  async function load() {
    try {
      const l = await api('GET', '/v1/rollouts');
      const rs = l.rollouts || [];
      if (!rs.length) { list.replaceChildren(h('p', {}, 'No rollout yet.')); return; }
      list.replaceChildren(h('div', { class: 'table-wrap' }, h('table', { id: 'rollouts-table' },
        h('thead', {}, h('tr', {}, ...['Rollout', 'Firmware', 'State', 'Targets', 'Batches', 'Created'].map(c => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, rs.map(r => h('tr', {},
          h('td', {}, h('a', { href: '#/rollout/' + encodeURIComponent(r.id) }, r.id)), h('td', {}, r.firmware),
          h('td', {}, badge(r.state, ROLLOUT_KIND[r.state] || 'muted'), r.reason ? h('div', { class: 'hint' }, r.reason) : null),
          h('td', {}, String(r.targets)), h('td', {}, r.batches_started + ' of ' + (r.batches || []).length), h('td', {}, fmtTime(r.created))))))));
    } catch (e) { list.replaceChildren(h('p', { class: 'notice bad' }, describe(e))); }
  }
  const reload = throttle(load, 1000);
  live('kinds=rollout-status', reload, reload);
  load();
}

function createForm() {
  const fw = h('select', { name: 'firmware', id: 'create-firmware', required: true });
  api('GET', '/v1/firmware').then(l => fw.replaceChildren(...(l.images || []).map(i => h('option', { value: i.version }, i.version + (i.hw ? ' (' + i.hw + ')' : ''))))).catch(() => {});
  const kind = h('select', { id: 'create-targets' }, h('option', { value: 'all' }, 'all devices'), h('option', { value: 'select' }, 'devices whose labels match'), h('option', { value: 'devices' }, 'these device IDs'));
  const sel = h('input', { id: 'create-select', placeholder: 'hw=m2,region=eu' });
  const devs = h('textarea', { id: 'create-devices', rows: 2, placeholder: 'lamp-1, lamp-2' });
  const num = (id, ph) => h('input', { id, type: 'number', min: 0, step: 'any', placeholder: ph, inputmode: 'decimal' });
  const first = num('create-first-batch', 'none'), size = num('create-batch-size', 'e.g. 50'), pct = num('create-batch-percent', 'e.g. 10');
  const ramp = num('create-ramp', 'e.g. 2'), maxSize = num('create-max-batch-size', ''), success = num('create-success-threshold', '100');
  const failPct = num('create-failure-percent', ''), failCount = num('create-failure-count', ''), minSample = num('create-min-sample', '');
  const retries = num('create-retries', '0'), inflight = num('create-max-in-flight', '');
  const onFail = h('select', { id: 'create-on-failure' }, ...['pause', 'abort', 'rollback'].map(v => h('option', { value: v }, v)));
  const approve = h('input', { type: 'checkbox', id: 'create-approval' });
  const dynamic = h('input', { type: 'checkbox', id: 'create-dynamic' });
  const skip = h('input', { type: 'checkbox', id: 'create-skip-incompatible' });
  const window_ = h('input', { id: 'create-window', placeholder: '22:00-06:00' });
  const tz = h('input', { id: 'create-window-tz', placeholder: 'Europe/Paris' });
  const startAt = h('input', { id: 'create-start-at', type: 'datetime-local' });
  const timeout = h('input', { id: 'create-device-timeout', placeholder: '30m' });
  const preview = h('div', { id: 'create-preview', role: 'status' });
  const msg = h('div', { id: 'create-msg', role: 'status' });
  const check = (label, box) => h('div', { class: 'field' }, h('label', { for: box.id }, box, ' ', label));
  const form = h('form', { class: 'panel', id: 'create-rollout' }, h('h2', {}, 'New rollout'),
    h('div', { class: 'row' }, field('Firmware version', fw), field('Targets', kind), field('Label selector', sel)),
    field('Device IDs', devs, '(comma or space separated)'),
    h('fieldset', {}, h('legend', {}, 'Batches'), h('div', { class: 'row' }, field('First batch (canary)', first), field('Batch size', size),
      field('or batch %', pct), field('Ramp ×', ramp), field('Max batch size', maxSize), field('Max in flight', inflight))),
    h('fieldset', {}, h('legend', {}, 'Thresholds'), h('div', { class: 'row' }, field('Success threshold %', success),
      field('Failure threshold %', failPct), field('or failures', failCount), field('Min sample', minSample), field('On failure', onFail), field('Retries', retries))),
    h('fieldset', {}, h('legend', {}, 'Schedule'), h('div', { class: 'row' }, field('Window', window_), field('Window time zone', tz),
      field('Start at', startAt), field('Device timeout', timeout))),
    check('Wait for approval before each batch', approve), check('Also take matching devices enrolled later (dynamic)', dynamic),
    check('Skip devices of another hardware model', skip),
    preview, msg,
    h('div', { class: 'actions' }, h('button', { type: 'button', class: 'secondary', id: 'create-preview-btn', onclick: () => doPreview() }, 'Preview targets'),
      h('button', { type: 'submit' }, 'Create rollout')));
  function spec() {
    const s = { firmware: fw.value };
    if (kind.value === 'all') s.all = true;
    else if (kind.value === 'select') {
      s.select = {};
      for (const kv of sel.value.split(',').map(x => x.trim()).filter(Boolean)) {
        const i = kv.indexOf('=');
        if (i < 1) throw new Error('The label selector "' + kv + '" is not key=value.');
        s.select[kv.slice(0, i)] = kv.slice(i + 1);
      }
      if (!Object.keys(s.select).length) throw new Error('Give a label selector such as hw=m2.');
    } else {
      s.devices = devs.value.split(/[\s,]+/).filter(Boolean);
      if (!s.devices.length) throw new Error('Give at least one device ID.');
    }
    const n = el => (el.value === '' ? undefined : Number(el.value));
    Object.assign(s, {
      first_batch: n(first), batch_size: n(size), batch_percent: n(pct), ramp: n(ramp), max_batch_size: n(maxSize),
      max_in_flight: n(inflight), success_threshold: n(success), failure_percent: n(failPct), failure_count: n(failCount),
      min_sample: n(minSample), retries: n(retries),
    });
    if (onFail.value !== 'pause') s.on_failure = onFail.value;
    if (approve.checked) s.pause_between_batches = true;
    if (dynamic.checked) s.dynamic = true;
    if (skip.checked) s.skip_incompatible = true;
    if (window_.value.trim()) s.window = window_.value.trim();
    if (tz.value.trim()) s.window_tz = tz.value.trim();
    if (startAt.value) s.start_at = new Date(startAt.value).toISOString();
    if (timeout.value.trim()) s.device_timeout = timeout.value.trim();
    for (const k of Object.keys(s)) if (s[k] === undefined) delete s[k];
    return s;
  }
  async function doPreview() {
    preview.replaceChildren();
    let s;
    try { s = spec(); } catch (e) { preview.replaceChildren(h('p', { class: 'notice bad' }, e.message)); return; }
    let r;
    try {
      // The server applies every rule of a creation and stores nothing.
      r = await api('POST', '/v1/rollouts?dry_run=true', s);
    } catch (e) {
      const extra = e.body && e.body.incompatible ? ' Incompatible: ' + e.body.incompatible.map(d => d.id + ' (' + d.hw + ')').join(', ') + '.' : '';
      preview.replaceChildren(h('p', { class: 'notice bad', id: 'preview-error' }, describe(e) + extra));
      return;
    }
    const sizes = (r.batches || []).map(b => b.size);
    preview.replaceChildren(h('div', { class: 'notice', id: 'preview-result' },
      h('p', {}, `${r.targets} target device${r.targets === 1 ? '' : 's'}` + (r.excluded ? ` (${r.excluded} of another hardware model left out)` : '') +
        `, in ${sizes.length} batch${sizes.length === 1 ? '' : 'es'}: ` + sizes.slice(0, 12).join(', ') + (sizes.length > 12 ? ', …' : '') + '.'),
      h('p', { class: 'hint' }, 'As the server would create it now; devices already running the version are skipped when their turn comes.')));
  }
  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    msg.replaceChildren();
    let s;
    try { s = spec(); } catch (e) { msg.replaceChildren(h('p', { class: 'notice bad' }, e.message)); return; }
    try {
      const r = await api('POST', '/v1/rollouts', s);
      location.hash = '#/rollout/' + encodeURIComponent(r.id);
    } catch (e) {
      const extra = e.body && e.body.incompatible ? ' Incompatible: ' + e.body.incompatible.map(d => d.id + ' (' + d.hw + ')').join(', ') + '.' : '';
      msg.replaceChildren(h('p', { class: 'notice bad', id: 'create-error' }, describe(e) + extra));
    }
  });
  return form;
}

const DONE_STATES = ['succeeded', 'already-installed', 'failed', 'timed_out', 'canceled', 'rolled_back'];

function pageRollout(id) {
  const head = h('div', { id: 'rollout-head' }, 'Loading…');
  const counters = h('div', { class: 'totals', id: 'rollout-counters' });
  const bar = h('div', { class: 'bar', role: 'img', id: 'rollout-bar' });
  const controls = h('div', { class: 'actions', id: 'rollout-controls' });
  const batches = h('div', { id: 'rollout-batches' });
  const failing = h('div', { id: 'rollout-failing' });
  const log = h('ol', { class: 'log', id: 'rollout-log', reversed: true });
  const msg = h('div', { id: 'rollout-msg', role: 'status' });
  setMain(h('p', {}, h('a', { href: '#/rollouts' }, '← Rollouts')), h('h1', {}, 'Rollout ', h('code', {}, id)), readOnlyNote(),
    head, counters, bar, controls, msg, h('div', { class: 'grid' }, h('div', {}, h('h2', {}, 'Batches'), batches, h('h2', {}, 'Failures'), failing),
      h('div', {}, h('h2', {}, 'Event log'), log)));
  let lastSeq = 0;

  function renderCounts(counts, targets) {
    counts = counts || {};
    const done = DONE_STATES.reduce((a, k) => a + (counts[k] || 0), 0);
    const ok = (counts.succeeded || 0) + (counts['already-installed'] || 0);
    const bad = (counts.failed || 0) + (counts.timed_out || 0);
    const tile = (tid, n, label) => h('div', { class: 'total', id: tid }, h('b', {}, String(n)), h('span', {}, label));
    counters.replaceChildren(tile('rollout-done', done, 'of ' + targets + ' done'), tile('rollout-succeeded', ok, 'succeeded'),
      tile('rollout-failed', bad, 'failed or timed out'),
      tile('rollout-inflight', (counts.notified || 0) + (counts.downloading || 0) + (counts.installing || 0), 'in progress'),
      tile('rollout-pending', counts.pending || 0, 'pending'));
    counters.dataset.done = done; counters.dataset.targets = targets;
    const pct = x => (targets ? (100 * x / targets).toFixed(2) : 0) + '%';
    const s = h('i', { class: 's' }), f = h('i', { class: 'f' }), p = h('i', { class: 'p' });
    s.style.width = pct(ok); f.style.width = pct(bad); p.style.width = pct(done - ok - bad);
    bar.replaceChildren(s, f, p);
    bar.setAttribute('aria-label', `${ok} succeeded, ${bad} failed, ${done} of ${targets} done`);
  }
  function renderControls(r) {
    if (!canWrite()) { controls.replaceChildren(); return; }
    const act = (label, op, cls) => h('button', { type: 'button', class: cls || 'secondary', 'data-op': op, onclick: async ev => {
      ev.target.disabled = true;
      try {
        await api('POST', '/v1/rollouts/' + encodeURIComponent(id) + '/' + op);
        msg.replaceChildren(h('p', { class: 'notice' }, label + ': done.'));
        load();
      } catch (e) { msg.replaceChildren(h('p', { class: 'notice bad' }, describe(e))); } finally { ev.target.disabled = false; }
    } }, label);
    const active = r.state === 'running' || r.state === 'paused' || r.state === 'created';
    const approval = r.state === 'paused' && (r.awaiting_approval || /approv/i.test(r.reason || ''));
    controls.replaceChildren(...[
      r.state === 'running' || r.state === 'created' ? act('Pause', 'pause') : null,
      r.state === 'paused' ? act(approval ? 'Approve next batch' : 'Resume', 'resume', approval ? '' : 'secondary') : null,
      active ? act('Abort', 'abort', 'danger') : null,
      active || r.state === 'failed' || r.state === 'aborted' ? act('Roll back', 'rollback', 'danger') : null,
      !active && ((r.counts || {}).failed || (r.counts || {}).timed_out) ? act('Retry failed devices', 'retry') : null].filter(Boolean));
  }
  async function load() {
    try {
      const r = await api('GET', '/v1/rollouts/' + encodeURIComponent(id));
      head.replaceChildren(h('p', {}, 'Firmware ', h('b', {}, r.firmware), ' — ', h('span', { id: 'rollout-state' }, badge(r.state, ROLLOUT_KIND[r.state] || 'muted')),
        r.reason ? ' ' + r.reason : '', r.waiting ? h('span', { class: 'hint' }, ' (waiting: ' + r.waiting + ')') : '',
        r.retry_of ? [' Retry of ', h('a', { href: '#/rollout/' + r.retry_of }, r.retry_of), '.'] : ''));
      head.dataset.state = r.state;
      renderCounts(r.counts, r.targets);
      renderControls(r);
      batches.replaceChildren(h('div', { class: 'table-wrap' }, h('table', {},
        h('thead', {}, h('tr', {}, ...['#', 'Size', 'State', 'Succeeded', 'Failed'].map(c => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, (r.batch_status || []).map(b => h('tr', {}, h('td', {}, String(b.index)), h('td', {}, String(b.size)), h('td', {}, b.state),
          h('td', {}, String((b.counts.succeeded || 0) + (b.counts['already-installed'] || 0))),
          h('td', {}, String((b.counts.failed || 0) + (b.counts.timed_out || 0)))))))));
      const f = r.failing || [];
      failing.replaceChildren(f.length ? h('ul', {}, f.map(d => h('li', {}, h('a', { href: '#/device/' + encodeURIComponent(d.device) }, d.device), ' ',
        badge(d.state, 'bad'), ' attempt ', String(d.attempt), d.error ? ': ' + d.error : ''))) : h('p', {}, 'None.'));
    } catch (e) { head.replaceChildren(h('p', { class: 'notice bad' }, describe(e))); }
  }
  function addEvent(e) {
    if (e.seq && e.seq <= lastSeq) return;
    lastSeq = Math.max(lastSeq, e.seq || 0);
    log.prepend(h('li', {}, new Date(e.time).toISOString().slice(11, 19), ' ', h('b', {}, e.kind),
      e.state ? ' ' + e.state : '', e.device ? ' ' + e.device : '', e.batch ? ' batch ' + e.batch : '', e.reason ? ': ' + e.reason : ''));
    while (log.children.length > 500) log.lastChild.remove();
  }
  async function loadEvents() {
    try {
      const l = await api('GET', '/v1/rollouts/' + encodeURIComponent(id) + '/events?after=' + lastSeq);
      for (const e of l.events || []) addEvent(e);
    } catch (e) { /* shown by load */ }
  }
  const reload = throttle(load, 1000);
  live('kinds=rollout,rollout-status&rollout=' + encodeURIComponent(id), (kind, ev) => {
    if (kind === 'rollout-status') { renderCounts(ev.payload.counts, ev.payload.targets); reload(); } else { addEvent(ev.payload); reload(); }
  }, () => { load(); loadEvents(); });
  load(); loadEvents();
}

// ---- start --------------------------------------------------------------

window.addEventListener('hashchange', route);
$('#signout').addEventListener('click', () => signOut('Signed out.'));
(async () => {
  if (session.token) {
    try { await signIn(); } catch (e) { signOut(e.status === 401 ? 'Your token is no longer valid. Sign in again.' : describe(e)); return; }
  }
  route();
})();
