// download fetches a job document's url (http or https) and returns its
// size and sha256, as a device checks an image before it flashes it.
'use strict';
const crypto = require('crypto');
const http = require('http');
const https = require('https');

function download(url) {
  return new Promise((resolve, reject) => {
    const get = url.startsWith('https:') ? https.get : http.get;
    get(url, (res) => {
      const hash = crypto.createHash('sha256');
      let bytes = 0;
      res.on('data', (chunk) => { hash.update(chunk); bytes += chunk.length; });
      res.on('end', () => resolve({ status: res.statusCode, bytes, sha256: hash.digest('hex') }));
      res.on('error', reject);
    }).on('error', reject);
  });
}

module.exports = { download };
