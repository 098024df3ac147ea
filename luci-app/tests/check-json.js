// Parses the LuCI app's menu and ACL JSON and checks that they name only what exists:
// every menu view is a file, every ubus method the ACL grants is one the rpcd backend lists
// (argv[3], the output of `shadowmesh rpcd list`) and one a view calls, every method a view
// calls is granted, and the only UCI config is shadowmesh. Besides our own object, the ACL may
// grant the methods of luci-base's rpcd plugin a view uses (Start/Stop/Restart), and to readers
// what luci-base's log reader (tools/views.js LogreadBox) needs when a view uses it: ubus
// log.read (OpenWrt 25.12), file.stat, cgi-io exec and `logread -e shadowmesh` (24.10).
// usage: node check-json.js LUCI_APP_DIR RPCD_LIST_JSON
'use strict';
const fs = require('fs');
const path = require('path');

const app = process.argv[2];
const listed = JSON.parse(process.argv[3]);
const fail = (msg) => { console.error('check-json: ' + msg); process.exit(1); };
const read = (p) => {
	try { return JSON.parse(fs.readFileSync(path.join(app, p), 'utf8')); }
	catch (e) { fail(p + ': ' + e.message); }
};

const viewDir = path.join(app, 'htdocs/luci-static/resources/view');
const menu = read('root/usr/share/luci/menu.d/luci-app-shadowmesh.json');
const acl = read('root/usr/share/rpcd/acl.d/luci-app-shadowmesh.json');
const aclNames = Object.keys(acl);

let views = 0;
for (const [node, entry] of Object.entries(menu)) {
	if (!entry.title) fail(node + ': no title');
	const a = entry.action || {};
	if (a.type === 'view') {
		if (!fs.existsSync(path.join(viewDir, a.path + '.js'))) fail(node + ': no view ' + a.path);
		views++;
	} else if (a.type !== 'firstchild') fail(node + ': unexpected action ' + a.type);
	for (const name of ((entry.depends || {}).acl || []))
		if (!aclNames.includes(name)) fail(node + ': depends on unknown ACL ' + name);
}
if (views < 2) fail('menu has ' + views + ' views');

// What the views call: rpc.declare({ object: 'x', method: 'y' }).
const called = new Set();
let logreader = false;
for (const f of fs.readdirSync(path.join(viewDir, 'shadowmesh'))) {
	const src = fs.readFileSync(path.join(viewDir, 'shadowmesh', f), 'utf8');
	if (/'require tools\.views as views';/.test(src) && /views\.LogreadBox\('shadowmesh'/.test(src)) {
		logreader = true;
		called.add('log.read');
		called.add('file.stat');
	}
	const re = /rpc\.declare\(\{\s*object:\s*'([^']+)',\s*method:\s*'([^']+)'/g;
	let m;
	while ((m = re.exec(src))) called.add(m[1] + '.' + m[2]);
}

// luci-base's `luci` object (root/usr/share/rpcd/ucode/luci on master and openwrt-24.10): the
// methods an app may be granted for its views.
const luciBase = ['setInitAction'];

const granted = new Set();
for (const [name, grant] of Object.entries(acl)) {
	if (!grant.description) fail(name + ': no description');
	for (const mode of ['read', 'write']) {
		const g = grant[mode] || {};
		for (const k of Object.keys(g))
			if (!['ubus', 'uci'].concat(logreader && mode === 'read' ? ['cgi-io', 'file'] : []).includes(k))
				fail(name + '.' + mode + ': unexpected ' + k);
		if (g['cgi-io'] && JSON.stringify(g['cgi-io']) !== '["exec"]') fail(name + ': cgi-io ' + JSON.stringify(g['cgi-io']));
		if (g.file && JSON.stringify(g.file) !== JSON.stringify({ '/sbin/logread -e shadowmesh': ['exec'] }))
			fail(name + ': file ' + JSON.stringify(g.file) + ', more than the log reader needs');
		for (const cfg of g.uci || [])
			if (cfg !== 'shadowmesh') fail(name + ': grants uci config ' + cfg);
		for (const [obj, methods] of Object.entries(g.ubus || {})) {
			const reader = logreader && mode === 'read' && ((obj === 'log' && JSON.stringify(methods) === '["read"]') || (obj === 'file' && JSON.stringify(methods) === '["stat"]'));
			if (obj !== 'shadowmesh' && obj !== 'luci' && !reader) fail(name + ': grants ubus object ' + obj);
			for (const meth of methods) {
				if (obj === 'shadowmesh' && !(meth in listed)) fail(name + ': grants ' + obj + '.' + meth + ', which rpcd does not list');
				if (obj === 'luci' && !luciBase.includes(meth)) fail(name + ': grants luci.' + meth + ', not a luci-base method an app needs');
				if (obj === 'luci' && mode !== 'write') fail(name + ': grants luci.' + meth + ' to readers');
				granted.add(obj + '.' + meth);
			}
		}
	}
}
for (const c of called) if (!granted.has(c)) fail('a view calls ' + c + ', which the ACL does not grant');
for (const g of granted) if (!called.has(g)) fail('the ACL grants ' + g + ', which no view uses');
console.log('check-json: ' + views + ' views, ubus ' + [...granted].join(' ') + ', uci shadowmesh');
