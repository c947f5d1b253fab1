// Package console is Umbra's web console: plain HTML, CSS and JavaScript
// embedded in the binary and served by umbra serve at / (the page) and
// /console/ (its two assets), with no build step and no library: the
// JavaScript is this package's assets/app.js as written.
//
// # Security
//
// Every answer carries a strict Content-Security-Policy (default-src
// 'self', no inline script or style, no frames, no form posts elsewhere),
// X-Frame-Options DENY, Referrer-Policy no-referrer and nosniff; the page
// loads nothing from another origin (system fonts, no icons). The API
// token is typed into the sign-in form, kept in sessionStorage (gone when
// the tab closes) and sent in the Authorization header of every API call,
// the live feed included: the page reads GET /v1/events with fetch and a
// stream reader instead of EventSource, which cannot send headers, so the
// token is never in a URL. No cookie is used, so the API's routes see no
// ambient credential a page of another origin could ride (and the API
// refuses cross-origin writes anyway). The page learns its role by asking
// GET /v1/tokens (operators only); an integrator's page hides every
// control, and the server refuses the writes whatever the page does.
//
// # Pages
//
// Fleet (totals, filters, a page of 100 devices from GET /v1/devices,
// reloaded at most once a second while the live feed reports presence or
// shadow changes), device (enrolment, presence, the shadow updating live,
// the desired state edited under the version lock with the 409 shown with
// the current document, rotate, remove, assign firmware), firmware
// (upload with an XMLHttpRequest progress bar, list, show, delete) and
// rollouts (the create form with the CLI's options and a preview of the
// targets and batches, the list, and one rollout's live progress, batches,
// failures, event log and controls).
package console
