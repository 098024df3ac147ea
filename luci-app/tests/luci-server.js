// Serves the views inside LuCI's own client framework (luci.js, ui.js, form.js, rpc.js, uci.js,
// validation.js, uqr.js and the bootstrap theme's stylesheet from openwrt/luci, pinned in
// ../shared/vendor/luci/ or fetched by `cargo xtask` when that is absent), booted the way
// LuCI's page template (header.ut + view.ut) boots them, and answers what the framework asks
// the router for:
// - POST /ubus/: ubus JSON-RPC 2.0 (single or batched) as rpcd answers it: `list`, and `call`
//   of session.access, luci.getFeatures, file.list (no preloads), uci get/set/add/delete/
//   order/changes over the UCI file through the project's `uci` stand-in (changes staged until
//   apply, as rpcd stages them per session), and the app's own object through the real rpcd
//   exec plugin, checked against the app's ACL (read-only users get only the read half); an
//   object that does not exist answers "Object not found" (code 4), as ubus does.
// - POST /cgi-bin/luci/admin/uci/apply_rollback and /confirm: Save & Apply. The staged changes
//   are committed and every apply is recorded for the test (GET /harness/applied). With
//   `procdRoot` (an image root whose etc/config is `uciDir`), a change of the shadowmesh config
//   then runs `/etc/init.d/shadowmesh reload` through procd-service, the stand-in of procd that
//   starts, restarts or signals a real daemon as procd would, as `reload_config` does on a router.
// - `network.interface dump` with a router's networks (NETWORKS), for LuCI's network model.
// - The log view's backends: ubus `log.read` (master's LogreadBox) and `file.stat` + cgi-exec
//   `logread -e shadowmesh` (24.10's), both with the daemon's output (`daemonLog`) as logd holds
//   what procd hands it, and both refused without the ACL that grants them, as rpcd and cgi-io do.
'use strict';
const http = require('http');
const fs = require('fs');
const path = require('path');
const { execFileSync, spawnSync } = require('child_process');

const ROOT = path.resolve(__dirname, '../..');
const APP = path.join(ROOT, 'luci-app/luci-app-shadowmesh');
const UCI = path.join(ROOT, 'openwrt-package/tests/standins/uci');
const PLUGIN = path.join(ROOT, 'openwrt-package/shadowmesh/files/shadowmesh.rpcd');
const PROCD = path.join(ROOT, 'openwrt-package/tests/standins/procd-service');
const TYPES = { '.js': 'text/javascript', '.css': 'text/css', '.svg': 'image/svg+xml', '.png': 'image/png', '.json': 'application/json' };

// A UCI file as `uci get` answers it over ubus: sections by name with .name/.type/.anonymous/
// .index, options as strings, lists as arrays.
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

// The daemon's output as logd keeps what procd hands it: one entry per line, tagged with the
// instance's name and PID.
function logEntries(file) {
	let text = '';
	try { text = fs.readFileSync(file, 'utf8'); } catch (e) { return []; }
	const now = Date.now();
	return text.split('\n').filter((l) => l).map((l, i, all) => ({
		msg: 'shadowmesh[1]: ' + l, priority: 3 * 8 + (/\[(error)\]/.test(l) ? 3 : /\[warn\]/.test(l) ? 4 : 6),
		source: 'daemon', time: now - (all.length - i) * 10
	}));
}

// The router's networks as netifd reports them (`network.interface dump`) and /etc/config/network
// declares them: a LAN and a guest network, an uplink with the default route, and the mesh's own
// interface that uci-defaults adds.
const NETWORKS = [
	{ interface: 'loopback', up: true, proto: 'static', device: 'lo', 'ipv4-address': [{ address: '127.0.0.1', mask: 8 }], route: [] },
	{ interface: 'lan', up: true, proto: 'static', device: 'br-lan', 'ipv4-address': [{ address: '192.168.1.1', mask: 24 }], route: [] },
	{ interface: 'guest', up: true, proto: 'static', device: 'br-guest', 'ipv4-address': [{ address: '192.168.3.1', mask: 24 }], route: [] },
	{ interface: 'wan', up: true, proto: 'dhcp', device: 'eth1', 'ipv4-address': [{ address: '203.0.113.7', mask: 24 }],
		route: [{ target: '0.0.0.0', mask: 0, nexthop: '203.0.113.1', source: '203.0.113.7/32' }] },
	{ interface: 'shadowmesh', up: true, proto: 'none', device: 'smesh0', 'ipv4-address': [], route: [] }
];
const NETWORK_UCI = NETWORKS.map((n) => `config interface '${n.interface}'\n\toption proto '${n.proto}'\n\toption device '${n.device}'\n`
	+ n['ipv4-address'].map((a) => `\toption ipaddr '${a.address}/${a.mask}'\n`).join('')).join('\n');

// The page header.ut + view.ut render for `view`, with the environment they fill in.
function page(luci, view, readOnly) {
	const env = {
		media: '/luci-static/bootstrap',
		resource: '/luci-static/resources',
		scriptname: '/cgi-bin/luci',
		pathinfo: '/admin/vpn/' + view,
		documentroot: '/www',
		requestpath: ['admin', 'vpn'].concat(view.split('/')),
		dispatchpath: ['admin', 'vpn'].concat(view.split('/')),
		pollinterval: 5,
		ubuspath: '/ubus/',
		sessionid: 'harness-session',
		token: 'harness-token',
		nodespec: { satisfied: true, readonly: !!readOnly, action: { type: 'view', path: view } },
		apply_rollback: 90,
		apply_holdoff: 1,
		apply_timeout: 5,
		apply_display: 1,
		rollback_token: null
	};
	// header.ut (the bootstrap theme's, then luci-base's), view.ut, footer.ut; no menu.
	return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>OpenWrt | ShadowMesh</title>
<link rel="stylesheet" href="/luci-static/bootstrap/cascade.css">
<link rel="icon" href="/luci-static/bootstrap/logo_48.png" sizes="48x48">
<link rel="icon" href="/luci-static/bootstrap/logo.svg" sizes="any">
<script src="/cgi-bin/luci/admin/translations/en"></script>
<script src="/luci-static/resources/cbi.js"></script>
</head><body class="lang_en" data-page="admin-vpn-${view.replace('/', '-')}">
<header><a class="brand" href="/">OpenWrt</a><ul class="nav" id="topmenu" style="display:none"></ul><div id="indicators" class="pull-right"></div></header>
<div id="maincontent" class="container">
<div id="tabmenu" style="display:none"></div>
<script src="/luci-static/resources/luci.js"></script>
<script>L = new LuCI(${JSON.stringify(env).replace(/\//g, '\\/')});</script>
<div id="view"><div class="spinning">Loading view…</div>
<script>L.require('ui').then(function(ui) { ui.instantiateView('${view}'); });</script>
</div>
</div>
</body></html>`;
}

function start(opts) {
	// luci-base's own /etc/config/luci, which every router with LuCI has.
	const luciConf = path.join(opts.uciDir, 'luci');
	if (!fs.existsSync(luciConf))
		fs.copyFileSync(path.join(opts.luci, 'modules/luci-base/root/etc/config/luci'), luciConf);
	// base-files' /etc/config/system, as a fresh image has it (the log reader reads its clock
	// settings).
	if (!fs.existsSync(path.join(opts.uciDir, 'network')))
		fs.writeFileSync(path.join(opts.uciDir, 'network'), NETWORK_UCI);
	const systemConf = path.join(opts.uciDir, 'system');
	if (!fs.existsSync(systemConf))
		fs.writeFileSync(systemConf, "config system\n\toption hostname 'OpenWrt'\n\toption timezone 'UTC'\n\toption zonename 'UTC'\n");
	// The app's ACL and luci-base's own (which every LuCI login holds), as rpcd merges them.
	const acl = Object.assign({},
		JSON.parse(fs.readFileSync(path.join(opts.luci, 'modules/luci-base/root/usr/share/rpcd/acl.d/luci-base.json'), 'utf8')),
		JSON.parse(fs.readFileSync(path.join(APP, 'root/usr/share/rpcd/acl.d/luci-app-shadowmesh.json'), 'utf8')));
	const state = { config: opts.rpcdConfig, staged: [], applied: [], ubus: [], denied: [], missing: [], answers: [], init: [], procd: [], objectMissing: false };
	const uci = (args) => execFileSync(UCI, ['-c', opts.uciDir, ...args], { encoding: 'utf8' });
	const granted = (obj, method) => Object.values(acl).some((g) =>
		[g.read, opts.readOnly ? null : g.write].some((k) => (((k || {}).ubus || {})[obj] || []).includes(method)));
	// rpcd's and cgi-io's other scopes: `file` (path patterns → permissions) and the rest
	// (`cgi-io`: objects granted for reading in "read", writing in "write").
	const fileGranted = (p, perm) => Object.values(acl).some((g) =>
		[g.read, opts.readOnly ? null : g.write].some((k) => Object.entries((k || {}).file || {}).some(([pat, perms]) =>
			perms.includes(perm) && new RegExp('^' + pat.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.') + '$').test(p))));
	const scopeGranted = (scope, obj, fn) => Object.values(acl).some((g) =>
		[fn === 'read' ? g.read : null, opts.readOnly ? null : g.write].some((k) => ((k || {})[scope] || []).includes(obj)));
	const uciGranted = (conf, write) => Object.values(acl).some((g) =>
		[g.read, opts.readOnly ? null : g.write].some((k, i) => (!write || i === 1) && ((k || {}).uci || []).includes(conf)));
	const roots = [
		[path.join(APP, 'htdocs'), '/luci-static/'],
		[path.join(opts.luci, 'modules/luci-base/htdocs'), '/luci-static/'],
		[path.join(opts.luci, 'libs/luci-lib-uqr/htdocs'), '/luci-static/'],
		[path.join(opts.luci, 'themes/luci-theme-bootstrap/htdocs'), '/luci-static/']
	];

	// One ubus call; returns [status] or [0, data], as rpcd's JSON-RPC result.
	function call(object, method, args) {
		state.ubus.push(object + '.' + method);
		if (object === 'session' && method === 'access') return [0, { access: true }];
		if (object === 'luci' && method === 'getFeatures') return [0, {}];
		// luci-base's init-script call: recorded (the harness is no procd), refused without the
		// ACL that grants it.
		if (object === 'luci' && method === 'setInitAction') {
			if (!granted(object, method)) {
				state.denied.push(`luci.setInitAction ${args.name} ${args.action}`);
				return [6];
			}
			state.init.push([args.name, args.action]);
			return [0, { result: true }];
		}
		if (object === 'file' && method === 'list') return [0, { entries: [] }];
		// rpcd's file.stat needs `list` on the path; logread is where OpenWrt puts it.
		if (object === 'file' && method === 'stat') {
			if (!granted(object, method) || !fileGranted(args.path, 'list')) {
				state.denied.push(`file.stat ${args.path}`);
				return [6];
			}
			return args.path === '/sbin/logread' ? [0, { path: args.path, type: 'file', size: 20480, mode: 33261 }] : [4];
		}
		if (object === 'network.interface' && method === 'dump') {
			if (!granted(object, method)) return [6];
			return [0, { interface: NETWORKS }];
		}
		if (object === 'log' && method === 'read') {
			if (!granted(object, method)) {
				state.denied.push('log.read');
				return [6];
			}
			return [0, { log: logEntries(opts.daemonLog).slice(-(args.lines || 1000)) }];
		}
		if (object === 'uci') {
			const conf = args.config;
			if (method === 'changes') {
				const ch = {};
				for (const c of state.staged) (ch[c[0]] = ch[c[0]] || []).push(c.slice(1));
				return [0, { changes: ch }];
			}
			const write = ['set', 'add', 'delete', 'order'].includes(method);
			if (!uciGranted(conf, write)) {
				state.denied.push(`uci.${method} ${conf}`);
				return [6];
			}
			if (method === 'get') {
				if (!fs.existsSync(path.join(opts.uciDir, conf))) return [4];
				return [0, { values: parseUci(uci(['export', conf])) }];
			}
			if (method === 'set') {
				for (const [opt, val] of Object.entries(args.values || {})) {
					if (Array.isArray(val)) {
						try { uci(['delete', `${conf}.${args.section}.${opt}`]); } catch (e) { /* not set yet */ }
						val.forEach((v) => uci(['add_list', `${conf}.${args.section}.${opt}=${v}`]));
					} else {
						uci(['set', `${conf}.${args.section}.${opt}=${val}`]);
					}
					state.staged.push([conf, 'set', args.section, opt, val]);
				}
				return [0];
			}
			if (method === 'delete') {
				for (const opt of args.options || []) {
					try { uci(['delete', `${conf}.${args.section}.${opt}`]); } catch (e) { /* already gone */ }
					state.staged.push([conf, 'remove', args.section, opt]);
				}
				return [0];
			}
			if (method === 'order' || method === 'add') return [0, { section: args.name || '' }];
			return [3];
		}
		if (object === 'shadowmesh' && !state.objectMissing) {
			if (!['status', 'secret'].includes(method)) return [3];
			if (!granted(object, method)) return [6];
			const r = spawnSync('sh', [PLUGIN, 'call', method], {
				input: JSON.stringify(args || {}), encoding: 'utf8', timeout: 40000,
				env: Object.assign({}, process.env, { SHADOWMESH_BIN: opts.bin, SHADOWMESH_CONFIG: state.config })
			});
			if (r.status !== 0 || !r.stdout) return [7];
			state.answers.push({ method, readOnly: !!opts.readOnly, answer: r.stdout });
			return [0, JSON.parse(r.stdout)];
		}
		return [4];
	}

	function jsonrpc(msg) {
		if (msg.method === 'list')
			return { jsonrpc: '2.0', id: msg.id, result: state.objectMissing ? {} : { shadowmesh: { status: {}, secret: {} } } };
		const [, object, method, args] = msg.params || [];
		const r = call(object, method, args || {});
		if (r[0] === 6) return { jsonrpc: '2.0', id: msg.id, error: { code: -32002, message: 'Access denied' } };
		return { jsonrpc: '2.0', id: msg.id, result: r };
	}

	const server = http.createServer((req, res) => {
		const send = (code, body, type) => {
			res.writeHead(code, { 'Content-Type': type || 'application/json' });
			res.end(typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body));
		};
		let body = '';
		req.on('data', (c) => { body += c; if (body.length > 1e6) req.destroy(); });
		req.on('end', () => {
			const url = new URL(req.url, 'http://localhost');
			try {
				const m = /^\/cgi-bin\/luci\/admin\/vpn\/(shadowmesh\/(settings|status|log))$/.exec(url.pathname);
				if (m) return send(200, page(opts.luci, m[1], opts.readOnly), 'text/html');
				// No catalogue: English, as LuCI serves it without a translation package.
				if (url.pathname === '/cgi-bin/luci/admin/translations/en') return send(200, '', 'text/javascript');
				if (url.pathname.startsWith('/luci-static/')) {
					for (const [dir, prefix] of roots) {
						const p = path.normalize(path.join(dir, 'luci-static', url.pathname.slice(prefix.length)));
						if (p.startsWith(dir) && fs.existsSync(p) && fs.statSync(p).isFile())
							return send(200, fs.readFileSync(p), TYPES[path.extname(p)] || 'application/octet-stream');
					}
					state.missing.push(url.pathname);
					return send(404, 'not found', 'text/plain');
				}
				if (url.pathname === '/ubus/' && req.method === 'POST') {
					const msg = JSON.parse(body);
					return send(200, Array.isArray(msg) ? msg.map(jsonrpc) : jsonrpc(msg));
				}
				if (url.pathname === '/cgi-bin/luci/admin/uci/apply_rollback' && req.method === 'POST') {
					if (!state.staged.length) return send(204, '');
					const confs = new Set(state.staged.map((c) => c[0]));
					for (const c of confs) uci(['commit', c]);
					state.applied.push(state.staged);
					state.staged = [];
					if (opts.procdRoot && confs.has('shadowmesh')) {
						const r = spawnSync(PROCD, [opts.procdRoot, 'reload'], { encoding: 'utf8', timeout: 30000, env: Object.assign({}, process.env, { PROCD_NETNS: opts.procdNetns || '' }) });
						state.procd.push({ status: r.status, stderr: r.stderr });
					}
					return send(200, { token: 'harness-rollback' });
				}
				// cgi-io's exec: the session needs cgi-io `exec` and the command line (or the
				// executable) granted `exec` under `file`.
				if (url.pathname === '/cgi-bin/cgi-exec' && req.method === 'POST') {
					const form = new URLSearchParams(body);
					const cmd = form.get('command') || '';
					if (!scopeGranted('cgi-io', 'exec', 'read')) return send(403, 'Exec permission denied', 'text/plain');
					if (!fileGranted(cmd, 'exec') && !fileGranted(cmd.split(' ')[0], 'exec')) {
						state.denied.push(`cgi-exec ${cmd}`);
						return send(403, 'Access to command denied by ACL', 'text/plain');
					}
					if (cmd !== '/sbin/logread -e shadowmesh') return send(404, 'Executable not found', 'text/plain');
					const day = new Date().toString().slice(0, 24);
					return send(200, logEntries(opts.daemonLog).map((e) => `${day} daemon.info ${e.msg}`).join('\n') + '\n', 'text/plain');
				}
				if (url.pathname === '/cgi-bin/luci/admin/uci/confirm' && req.method === 'POST') return send(200, {});
				if (url.pathname === '/harness/applied') return send(200, state.applied);
				if (url.pathname === '/harness/staged') return send(200, state.staged);
				if (url.pathname === '/harness/log') return send(200, { denied: state.denied, missing: state.missing, ubus: state.ubus });
				if (url.pathname === '/harness/answers') return send(200, state.answers);
				if (url.pathname === '/harness/init') return send(200, state.init);
				if (url.pathname === '/harness/procd') return send(200, state.procd);
				if (url.pathname === '/harness/readonly' && req.method === 'POST') {
					opts.readOnly = !!JSON.parse(body).readOnly;
					return send(200, { ok: true });
				}
				if (url.pathname === '/harness/object-missing' && req.method === 'POST') {
					state.objectMissing = !!JSON.parse(body).missing;
					return send(200, { ok: true });
				}
				state.missing.push(url.pathname);
				send(404, { error: 'not found' });
			} catch (e) {
				send(500, { error: String(e.message || e) });
			}
		});
	});
	return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, state, port: server.address().port })));
}

module.exports = { start, parseUci };
