// The views inside LuCI's own framework (luci-server.js) in headless Chromium.
//
// usage: node luci-real-test.js settings|status
// env: SM_LUCI (LuCI's source tree: modules/, libs/, themes/), SM_BIN, SM_UCI_DIR (with the
//      fixture `shadowmesh` file), SM_RPCD_CONFIG, SM_ARTIFACTS (screenshots).
// Prints one "ok"/"FAIL" line per check; exits 1 if any failed.
'use strict';
const path = require('path');
const fs = require('fs');
const { chromium } = require('playwright-core');
const { start } = require('./luci-server');

const phase = process.argv[2];
const env = process.env;
let failed = 0;
const check = (name, cond, detail) => {
	console.log((cond ? 'ok   ' : 'FAIL ') + name + (cond ? '' : ': ' + (detail || '')));
	if (!cond) failed++;
};
const get = async (h, p) => (await fetch(`http://127.0.0.1:${h.port}${p}`)).json();

// Loads a view; returns the console errors and uncaught exceptions seen while it rendered.
async function open(page, h, view) {
	const errors = [];
	page.removeAllListeners('console');
	page.removeAllListeners('pageerror');
	page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
	page.on('pageerror', (e) => errors.push(String(e)));
	await page.goto(`http://127.0.0.1:${h.port}/cgi-bin/luci/admin/services/shadowmesh/${view}`);
	// (24.10's luci.js has no L.loaded: the view's own content replacing the spinner is the sign.)
	await page.waitForFunction(() => window.L && document.querySelector('#view .cbi-map') && !document.querySelector('#view > .spinning'), null, { timeout: 40000 });
	return errors;
}

async function settings(page, h) {
	let errors = await open(page, h, 'settings');
	check('settings renders in LuCI\'s framework with no console error', errors.length === 0,
		errors.join(' | ') + ' ' + JSON.stringify(await get(h, '/harness/log')));
	check('the form is LuCI\'s (cbi-map with the gateway section)',
		(await page.locator('.cbi-map .cbi-section').count()) >= 1);
	// The whole form in one tall viewport (a full-page capture would repeat the fixed header).
	await page.setViewportSize({ width: 1100, height: 1950 });
	await page.screenshot({ path: path.join(env.SM_ARTIFACTS, `luci-real-settings-${path.basename(env.SM_LUCI)}.png`) });
	await page.setViewportSize({ width: 1100, height: 900 });
	const port = page.locator('[data-name="listen_port"] input');
	check('listen_port shows the file\'s value', (await port.inputValue()) === '4500', await port.inputValue());

	// A trailing space is refused, never saved.
	await port.fill('4501 ');
	await port.blur();
	await page.click('.cbi-page-actions .cbi-button-save');
	await page.waitForTimeout(500);
	let staged = await get(h, '/harness/staged');
	check('a value with a trailing space is refused (nothing staged)',
		!staged.some((c) => c[3] === 'listen_port'), JSON.stringify(staged));
	check('the field is marked invalid', (await page.locator('[data-name="listen_port"] .cbi-input-invalid').count()) === 1);
	const modal = (await page.locator('#modal_overlay').innerText()) || '';
	check('LuCI says why it did not save', /Save error/.test(modal), modal);
	await page.locator('#modal_overlay button', { hasText: 'Dismiss' }).click();

	// The typed value, exactly, once valid.
	await port.fill('4501');
	await port.blur();
	await page.click('.cbi-page-actions .cbi-button-save');
	await page.waitForFunction(() => !document.querySelector('.cbi-page-actions .spinning'), null, { timeout: 10000 });
	await page.waitForTimeout(300);
	staged = await get(h, '/harness/staged');
	check('Save stages the typed value exactly', staged.some((c) => JSON.stringify(c) === JSON.stringify(['shadowmesh', 'set', 'main', 'listen_port', '4501'])), JSON.stringify(staged));
	// LuCI's flags write (or remove, at their default) on every save: the meaning must not change.
	const defaults = { enabled: '1', seed: '0', tunnel: '1', lan_discovery: '1', fast_lane: '1', offload: '1', plain_udp: '0', accept_routes: '1' };
	const fixture = require('./server').parseUci(fs.readFileSync(path.join(__dirname, 'fixture.uci'), 'utf8')).main;
	const changed = staged.filter((c) => c[3] !== 'listen_port').filter((c) => {
		const before = fixture[c[3]] ?? defaults[c[3]];
		const after = c[1] === 'remove' ? defaults[c[3]] : c[4];
		return before === undefined || String(before) !== String(after);
	});
	check('nothing else changes meaning (only LuCI\'s flag normalisation besides it)', changed.length === 0, JSON.stringify(changed));

	// Save & Apply commits it.
	errors = [];
	await page.click('.cbi-page-actions .cbi-button-apply');
	for (let i = 0; i < 50 && (await get(h, '/harness/applied')).length === 0; i++) await page.waitForTimeout(200);
	const applied = await get(h, '/harness/applied');
	const text = fs.readFileSync(path.join(env.SM_UCI_DIR, 'shadowmesh'), 'utf8');
	check('Save & Apply commits the change', applied.length === 1 && text.includes("option listen_port '4501'"), JSON.stringify(applied));

	// "Join a mesh": a join string sets the key and adds the gateway to the bootstrap peers.
	await open(page, h, 'settings');
	const join = page.locator('[data-name="_join"] input');
	await join.fill('shadowmesh:join?network_key=12');
	await join.blur();
	check('a bad join string is marked', (await page.locator('[data-name="_join"] .cbi-input-invalid').count()) === 1);
	const peer = 'cd'.repeat(32) + '@192.0.2.9:4433';
	await join.fill(`shadowmesh:join?network_key=${'ab'.repeat(32)}&bootstrap=${encodeURIComponent(peer)}`);
	await join.blur();
	await page.click('.cbi-page-actions .cbi-button-save');
	await page.waitForTimeout(800);
	staged = await get(h, '/harness/staged');
	const set = (opt) => staged.filter((c) => c[1] === 'set' && c[3] === opt).map((c) => c[4]).pop();
	check('a join string sets network_key and adds the bootstrap gateway',
		set('network_key') === 'ab'.repeat(32) && JSON.stringify(set('bootstrap')) === JSON.stringify(fixture.bootstrap.concat([peer])),
		JSON.stringify(staged));
	check('the join string itself is not stored', !staged.some((c) => c[3] === '_join'), JSON.stringify(staged));
}

async function status(page, h) {
	const errors = await open(page, h, 'status');
	check('status renders in LuCI\'s framework with no console error', errors.length === 0, errors.join(' | '));
	check('own PeerId shown', /^[0-9a-f]{64}$/.test((await page.textContent('#shadowmesh-peer-id')) || ''));
	await page.screenshot({ path: path.join(env.SM_ARTIFACTS, `luci-real-status-${path.basename(env.SM_LUCI)}.png`) });
	// A read-only user: Show is refused by rpcd, the page says why, and no answer the read ACL
	// gave carries the key.
	const key = (/option network_key '([0-9a-f]{64})'/.exec(fs.readFileSync(env.SM_RPCD_CONFIG, 'utf8')) || [])[1];
	// Against a running member (SM_EXPECT from the namespace lab): its peers, live.
	const exp = env.SM_EXPECT ? JSON.parse(env.SM_EXPECT) : null;
	if (exp) {
		check('the gateway shown is the lab\'s member', (await page.textContent('#shadowmesh-peer-id')) === exp.self);
		for (const p of exp.peers) {
			const row = page.locator(`#shadowmesh-peers tr[data-peer-id="${p.peer_id}"]`);
			const cells = (await row.count()) ? await row.locator('td').allTextContents() : [];
			check(`peer ${p.peer_id.slice(0, 12)} listed with its overlay address, path and RTT`,
				cells[0] === p.peer_id.slice(0, 12) && cells[1].startsWith(p.ipv4) && cells[3] === 'direct' && / ms$/.test(cells[4]),
				JSON.stringify(cells));
		}
	}
	if (exp && exp.restart_pending) {
		const notice = (await page.locator('#shadowmesh-restart-pending').textContent().catch(() => '')) || '';
		check('what the daemon reports waiting for a restart is shown', exp.restart_pending.every((o) => notice.includes(o)), notice);
	}
	// Restart goes to luci-base's setInitAction for this service, with the write ACL.
	await page.click('#shadowmesh-restart, #shadowmesh-start');
	for (let i = 0; i < 25 && (await get(h, '/harness/init')).length === 0; i++) await page.waitForTimeout(200);
	const init = await get(h, '/harness/init');
	const wanted = exp ? 'restart' : 'start';
	check(`the ${wanted} button calls luci.setInitAction("shadowmesh", "${wanted}")`,
		JSON.stringify(init) === JSON.stringify([['shadowmesh', wanted]]), JSON.stringify(init));
	await open(page, h, 'status');
	await page.click('#shadowmesh-show-key');
	await page.waitForSelector('#shadowmesh-network-key', { timeout: 10000 }).catch(() => {});
	check('with write access, Show reveals the key', key && (await page.locator('#shadowmesh-network-key').textContent().catch(() => '')) === key);
	if (exp && exp.join) {
		check('the QR code carries the daemon\'s join string', (await page.locator('#shadowmesh-qr svg').count()) === 1
			&& (await page.getAttribute('#shadowmesh-qr', 'title')) === exp.join);
	}
	await fetch(`http://127.0.0.1:${h.port}/harness/readonly`, { method: 'POST', body: JSON.stringify({ readOnly: true }) });
	await open(page, h, 'status');
	await page.click('#shadowmesh-show-key');
	await page.waitForSelector('#shadowmesh-key-denied', { timeout: 10000 }).catch(() => {});
	check('read-only: Show is refused and the page says why', (await page.locator('#shadowmesh-key-denied').count()) === 1
		&& (await page.locator('#shadowmesh-network-key').count()) === 0);
	await page.click('#shadowmesh-restart, #shadowmesh-start');
	await page.waitForSelector('#shadowmesh-init-error', { timeout: 10000 }).catch(() => {});
	check('read-only: the service buttons are refused by the ACL and the page says so',
		(await page.locator('#shadowmesh-init-error').count()) === 1 && (await get(h, '/harness/init')).length === 1,
		JSON.stringify(await get(h, '/harness/log')));
	const answers = await get(h, '/harness/answers');
	const leaked = answers.filter((a) => a.readOnly && key && a.answer.includes(key));
	check('no answer under the read ACL carries the network key', key && answers.some((a) => a.readOnly) && leaked.length === 0,
		JSON.stringify(leaked).slice(0, 200));
	await fetch(`http://127.0.0.1:${h.port}/harness/readonly`, { method: 'POST', body: JSON.stringify({ readOnly: false }) });
	await fetch(`http://127.0.0.1:${h.port}/harness/object-missing`, { method: 'POST', body: JSON.stringify({ missing: true }) });
	const errors2 = await open(page, h, 'status');
	const banner = (await page.locator('#shadowmesh-not-running').count()) === 1;
	check('no ubus object: "Service not running", not an error page', banner && !(await page.locator('.alert-message.error, .error').count()), errors2.join(' | '));
}

(async () => {
	const h = await start({
		luci: env.SM_LUCI, bin: env.SM_BIN, uciDir: env.SM_UCI_DIR, rpcdConfig: env.SM_RPCD_CONFIG
	});
	fs.mkdirSync(env.SM_ARTIFACTS, { recursive: true });
	// Nothing leaves the machine: no updates, no sync, no QUIC probing.
	const browser = await chromium.launch({
		executablePath: env.CHROMIUM || '/usr/bin/chromium',
		args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
			'--disable-component-update', '--disable-sync']
	});
	try {
		const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
		if (phase === 'settings') await settings(page, h);
		else if (phase === 'status') await status(page, h);
		else throw new Error('phase: settings | status');
	} catch (e) {
		check(`${phase} ran`, false, String(e && e.stack || e));
	} finally {
		await browser.close();
		h.server.close();
	}
	process.exit(failed ? 1 : 0);
})();
