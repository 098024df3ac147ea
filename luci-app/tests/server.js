// The harness server: serves the LuCI views and the stand-in API (harness/), and answers the
// two things LuCI asks the router for:
// - POST /ubus {object, method, params}: checked against the app's rpcd ACL as rpcd would, then
//   the real rpcd exec plugin (openwrt-package/shadowmesh/files/shadowmesh.rpcd) is run with
//   `call METHOD`, params on stdin, and its JSON answer returned.
// - GET /uci/CONF and POST /uci-save: the UCI file through the `uci` stand-in (export; set,
//   add_list, delete, commit), every change recorded for the test (GET /harness/changes).
'use strict';
const http = require('http');
const fs = require('fs');
const path = require('path');
const { execFileSync, spawnSync } = require('child_process');

const ROOT = path.resolve(__dirname, '../..');
const APP = path.join(ROOT, 'luci-app/luci-app-shadowmesh');
const UCI = path.join(ROOT, 'openwrt-package/tests/standins/uci');
const PLUGIN = path.join(ROOT, 'openwrt-package/shadowmesh/files/shadowmesh.rpcd');
const TYPES = { '.js': 'text/javascript', '.mjs': 'text/javascript', '.html': 'text/html', '.json': 'application/json' };

function parseUci(text) {
	const out = {};
	let cur = null, index = 0;
	const unq = (w) => w.replace(/^'(.*)'$/, '$1').replace(/^"(.*)"$/, '$1');
	for (const line of text.split('\n')) {
		const m = /^\s*(config|option|list)\s+(\S+)(?:\s+(.*))?$/.exec(line);
		if (!m) continue;
		if (m[1] === 'config') {
			const name = m[3] ? unq(m[3].trim()) : 'cfg' + String(index + 1).padStart(6, '0');
			cur = out[name] = { '.name': name, '.type': m[2], '.anonymous': !m[3], '.index': index++ };
		} else if (cur) {
			const v = unq((m[3] || '').trim());
			if (m[1] === 'list') (cur[m[2]] = Array.isArray(cur[m[2]]) ? cur[m[2]] : []).push(v);
			else cur[m[2]] = v;
		}
	}
	return out;
}

function start(opts) {
	const acl = JSON.parse(fs.readFileSync(path.join(APP, 'root/usr/share/rpcd/acl.d/luci-app-shadowmesh.json'), 'utf8'));
	const state = { config: opts.rpcdConfig, changes: [], ubus: [] };
	const uci = (args) => execFileSync(UCI, ['-c', opts.uciDir, ...args], { encoding: 'utf8' });
	// The harness's user may write (as LuCI's root login may); `readOnly` makes it a read-only
	// one, to check what the read ACL alone grants.
	const granted = (obj, method) => Object.values(acl).some((g) =>
		[g.read, opts.readOnly ? null : g.write].some((k) => (((k || {}).ubus || {})[obj] || []).includes(method)));

	const server = http.createServer((req, res) => {
		const send = (code, body, type) => {
			res.writeHead(code, { 'Content-Type': type || 'application/json' });
			res.end(typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body));
		};
		const file = (p) => fs.readFile(p, (err, data) => err ? send(404, { error: 'not found' }) : send(200, data, TYPES[path.extname(p)] || 'text/plain'));
		let body = '';
		req.on('data', (c) => { body += c; if (body.length > 1e6) req.destroy(); });
		req.on('end', () => {
			const url = new URL(req.url, 'http://localhost');
			try {
				if (url.pathname === '/') return file(path.join(__dirname, 'harness/index.html'));
				if (url.pathname.startsWith('/harness/') && req.method === 'GET' && url.pathname.endsWith('.js'))
					return file(path.join(__dirname, 'harness', path.basename(url.pathname)));
				if (url.pathname === '/uqr/index.mjs') return file(path.join(__dirname, 'node_modules/uqr/dist/index.mjs'));
				if (url.pathname.startsWith('/luci-static/')) {
					const p = path.normalize(path.join(APP, 'htdocs', url.pathname));
					return p.startsWith(path.join(APP, 'htdocs')) ? file(p) : send(403, { error: 'forbidden' });
				}
				if (url.pathname.startsWith('/uci/')) return send(200, parseUci(uci(['export', path.basename(url.pathname)])));
				if (url.pathname === '/uci-save' && req.method === 'POST') {
					const changes = JSON.parse(body);
					state.changes.push(...changes);
					const confs = new Set();
					for (const [op, conf, sid, opt, val] of changes) {
						if (conf !== 'shadowmesh') return send(403, { error: 'Access denied' });
						confs.add(conf);
						if (op === 'unset' || Array.isArray(val)) {
							try { uci(['delete', `${conf}.${sid}.${opt}`]); } catch (e) { if (op === 'unset') throw e; }
						}
						if (op === 'set' && Array.isArray(val)) val.forEach((v) => uci(['add_list', `${conf}.${sid}.${opt}=${v}`]));
						else if (op === 'set') uci(['set', `${conf}.${sid}.${opt}=${val}`]);
					}
					for (const c of confs) uci(['commit', c]);
					return send(200, { ok: true });
				}
				if (url.pathname === '/ubus' && req.method === 'POST') {
					const { object, method, params } = JSON.parse(body);
					state.ubus.push(object + '.' + method);
					if (!granted(object, method)) return send(403, { error: 'Access denied' });
					// As rpcd does: the arguments on the plugin's stdin, one JSON object back.
					const r = spawnSync('sh', [PLUGIN, 'call', method], {
						input: JSON.stringify(params || {}), encoding: 'utf8', timeout: 40000,
						env: Object.assign({}, process.env, { SHADOWMESH_BIN: opts.bin, SHADOWMESH_CONFIG: state.config })
					});
					if (r.status !== 0 || !r.stdout)
						return send(500, { error: 'plugin: ' + (r.error || r.stderr || r.status) });
					return send(200, JSON.parse(r.stdout));
				}
				if (url.pathname === '/harness/config' && req.method === 'POST') {
					state.config = JSON.parse(body).config;
					return send(200, { ok: true });
				}
				if (url.pathname === '/harness/changes') return send(200, state.changes);
				if (url.pathname === '/harness/readonly' && req.method === 'POST') {
					opts.readOnly = !!JSON.parse(body).readOnly;
					return send(200, { ok: true });
				}
				send(404, { error: 'not found' });
			} catch (e) {
				send(500, { error: String(e.message || e) });
			}
		});
	});
	return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, state, port: server.address().port })));
}

module.exports = { start, parseUci };
