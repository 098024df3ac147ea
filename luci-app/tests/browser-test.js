// Loads the LuCI views in headless Chromium (Debian's, driven by playwright-core) through the
// harness page, against the real rpcd backend and a running (or stopped) daemon.
//
// usage: node browser-test.js settings|status|stopped
// env: SM_BIN (shadowmesh binary), SM_UCI_DIR (directory with the fixture `shadowmesh` file),
//      SM_RPCD_CONFIG (the config the rpcd plugin reads), SM_ARTIFACTS (screenshots go here),
//      SM_EXPECT (JSON: {self, network_key, peers: [{peer_id, ipv4}]}) for status/stopped.
// Prints one "ok"/"FAIL" line per check; exits 1 if any failed.
'use strict';
const path = require('path');
const fs = require('fs');
const { execFileSync } = require('child_process');
const { chromium } = require('playwright-core');
const { start } = require('./server');

const phase = process.argv[2];
const env = process.env;
const artifacts = env.SM_ARTIFACTS;
let failed = 0;
const check = (name, cond, detail) => {
	console.log((cond ? 'ok   ' : 'FAIL ') + name + (cond ? '' : ': ' + (detail || '')));
	if (!cond) failed++;
};

async function settings(page, h) {
	await page.goto(`http://127.0.0.1:${h.port}/?view=shadowmesh/settings`);
	await page.waitForSelector('body[data-loaded], body[data-error]', { timeout: 20000 });
	check('settings view loads', !(await page.getAttribute('body', 'data-error')), await page.getAttribute('body', 'data-error'));
	const fixture = require('./server').parseUci(fs.readFileSync(path.join(env.SM_UCI_DIR, 'shadowmesh'), 'utf8')).main;
	// Every value of the fixture file is in the form.
	for (const opt of ['network_key', 'listen_port', 'interface', 'mtu', 'key_file', 'state_dir']) {
		const v = await page.inputValue(`input[name=${opt}]`);
		check(`form shows ${opt} = ${fixture[opt]}`, v === fixture[opt], `form has ${JSON.stringify(v)}`);
	}
	check('form shows log_level', (await page.inputValue('select[name=log_level]')) === fixture.log_level);
	for (const [opt, want] of [['enabled', true], ['seed', false], ['tunnel', true], ['lan_discovery', false], ['plain_udp', false]])
		check(`form shows flag ${opt} = ${want}`, (await page.isChecked(`input[name=${opt}]`)) === want);
	for (const opt of ['bootstrap', 'route', 'allowed_peer']) {
		const items = await page.$$eval(`.cbi-dynlist[data-name=${opt}] .item input`, (l) => l.map((i) => i.value));
		check(`form shows list ${opt}`, JSON.stringify(items) === JSON.stringify(fixture[opt]), JSON.stringify(items));
	}

	// An invalid CIDR (host bits set) is refused before saving, and nothing is written.
	const addRoute = async (v) => {
		await page.fill('.cbi-dynlist[data-name=route] input.add-item', v);
		await page.click('.cbi-dynlist[data-name=route] .cbi-button-add');
	};
	await addRoute('192.168.20.1/24');
	const bad = page.locator('.cbi-dynlist[data-name=route] .item').last();
	check('invalid CIDR is marked', await bad.locator('input.cbi-input-invalid').count() === 1);
	const msg = await bad.locator('.cbi-value-error').textContent();
	check('invalid CIDR shows the reason', /host bits/i.test(msg), msg);
	await page.fill('.cbi-dynlist[data-name=bootstrap] input.add-item', 'not-a-peer');
	await page.click('.cbi-dynlist[data-name=bootstrap] .cbi-button-add');
	check('invalid PEERID@host:port is marked',
		(await page.locator('.cbi-dynlist[data-name=bootstrap] .item input.cbi-input-invalid').count()) === 1);
	await page.fill('input[name=listen_port]', '70000');
	await page.dispatchEvent('input[name=listen_port]', 'input');
	check('invalid port is marked', (await page.locator('input[name=listen_port].cbi-input-invalid').count()) === 1);
	await page.fill('input[name=overlay_ipv4]', '10.100.0.0/24');
	await page.dispatchEvent('input[name=overlay_ipv4]', 'input');
	check('an overlay that is not a /16 is marked', (await page.locator('input[name=overlay_ipv4].cbi-input-invalid').count()) === 1);
	await page.screenshot({ path: path.join(artifacts, 'luci-settings-invalid.png'), fullPage: true });
	await page.evaluate(() => { window.__saved = null; });
	await page.click('#save');
	await page.waitForFunction(() => window.__saved !== null);
	const saved = await page.evaluate(() => window.__saved);
	check('save with invalid fields is refused', /invalid/.test(saved), saved);
	check('the refusal is shown', /invalid/.test(await page.textContent('#notifications')));
	let changes = await (await fetch(`http://127.0.0.1:${h.port}/harness/changes`)).json();
	check('nothing was written', changes.length === 0, JSON.stringify(changes));

	// Fixed values save as the expected UCI changes, and the daemon accepts the result.
	await page.locator('.cbi-dynlist[data-name=bootstrap] .item').last().locator('.cbi-button-remove').click();
	await bad.locator('input').fill('192.168.20.0/24');
	await page.fill('input[name=listen_port]', '4501');
	await page.fill('input[name=overlay_ipv4]', '');
	await page.dispatchEvent('input[name=overlay_ipv4]', 'input');
	await page.selectOption('select[name=log_level]', 'info');
	await page.evaluate(() => { window.__saved = null; document.getElementById('notifications').innerHTML = ''; });
	await page.click('#save');
	await page.waitForFunction(() => window.__saved !== null);
	check('save succeeds', (await page.evaluate(() => window.__saved)) === 'ok', await page.evaluate(() => window.__saved));
	changes = await (await fetch(`http://127.0.0.1:${h.port}/harness/changes`)).json();
	const want = [
		['set', 'shadowmesh', 'main', 'listen_port', '4501'],
		['set', 'shadowmesh', 'main', 'route', fixture.route.concat(['192.168.20.0/24'])],
		['set', 'shadowmesh', 'main', 'log_level', 'info']
	];
	check('saving produces exactly the expected UCI changes', JSON.stringify(changes) === JSON.stringify(want), JSON.stringify(changes));
	const text = fs.readFileSync(path.join(env.SM_UCI_DIR, 'shadowmesh'), 'utf8');
	check('the committed file has them', text.includes("option listen_port '4501'") && text.includes("list route '192.168.20.0/24'") && text.includes("option log_level 'info'"), text);
	const st = JSON.parse(execFileSync(env.SM_BIN, ['rpcd', '--config', path.join(env.SM_UCI_DIR, 'shadowmesh'), 'call', 'status'], { encoding: 'utf8' }));
	check('the daemon\'s parser accepts the saved file', !st.config_error && st.listen_port === 4501, JSON.stringify(st));
	await page.reload();
	await page.waitForSelector('body[data-loaded]');
	await page.screenshot({ path: path.join(artifacts, 'luci-settings.png'), fullPage: true });
}

async function status(page, h, running) {
	const exp = JSON.parse(env.SM_EXPECT);
	await page.goto(`http://127.0.0.1:${h.port}/?view=shadowmesh/status`);
	await page.waitForSelector('body[data-loaded], body[data-error]', { timeout: 40000 });
	check('status view loads', !(await page.getAttribute('body', 'data-error')), await page.getAttribute('body', 'data-error'));
	check('own PeerId shown', (await page.textContent('#shadowmesh-peer-id')) === exp.self, await page.textContent('#shadowmesh-peer-id'));
	// The key is in no read-ACL answer, and on the page only once asked for.
	const ubus = async (method) => (await fetch(`http://127.0.0.1:${h.port}/ubus`, {
		method: 'POST', body: JSON.stringify({ object: 'shadowmesh', method })
	})).json();
	const st = await ubus('status');
	check('the status answer carries no network key', !JSON.stringify(st).includes(exp.network_key), JSON.stringify(st).slice(0, 200));
	check('the key is hidden until asked for',
		(await page.locator('#shadowmesh-network-key').count()) === 0 && (await page.locator('#shadowmesh-show-key').count()) === 1);
	await page.click('#shadowmesh-show-key');
	await page.waitForSelector('#shadowmesh-network-key', { timeout: 20000 });
	check('network key shown', (await page.textContent('#shadowmesh-network-key')) === exp.network_key);
	if (exp.join) {
		check('QR code rendered', (await page.locator('#shadowmesh-qr svg').count()) === 1);
		const join = await page.getAttribute('#shadowmesh-qr', 'title');
		check('QR code and join string are the daemon\'s join string', join === exp.join && (await page.textContent('#shadowmesh-join')) === exp.join, join);
		check('the join string never names the browser\'s host', !join.includes('@127.0.0.1:') && !join.includes('@localhost'), join);
	} else {
		check('no address to offer: no QR code, and the page says what to set',
			(await page.locator('#shadowmesh-qr').count()) === 0 && (await page.locator('#shadowmesh-no-join').count()) === 1);
	}
	await page.click('#shadowmesh-copy');
	// The clipboard write is asynchronous: wait for what it put there.
	let copied = '';
	for (let i = 0; i < 50 && copied !== exp.network_key; i++) {
		copied = await page.evaluate(() => navigator.clipboard.readText().catch(() => ''));
		if (copied !== exp.network_key) await page.waitForTimeout(100);
	}
	check('copy button puts the network key on the clipboard', copied === exp.network_key, JSON.stringify(copied));
	if (running) {
		check('no "not running" banner', (await page.locator('#shadowmesh-not-running').count()) === 0);
		check('overlay IPv4 shown', /^10\.100\.\d+\.\d+$/.test(await page.textContent('#shadowmesh-ipv4')));
		check('DHT size shown', /^\d+$/.test(await page.textContent('#shadowmesh-dht-size')));
		// The poller refreshes in place; ask it once more, then read the live peer table.
		await page.evaluate(() => window.__pollNow());
		for (const p of exp.peers) {
			const row = page.locator(`#shadowmesh-peers tr[data-peer-id="${p.peer_id}"]`);
			check(`peer ${p.peer_id.slice(0, 12)} listed`, (await row.count()) === 1);
			if (await row.count()) {
				const cells = await row.locator('td').allTextContents();
				check(`peer ${p.peer_id.slice(0, 12)}: name, overlay address, direct, RTT, traffic`,
					cells[0] === p.peer_id.slice(0, 12) && cells[1].startsWith(p.ipv4) && cells[3] === 'direct'
					&& / ms$/.test(cells[4]) && /B/.test(cells[5]) && cells[6] !== '-', JSON.stringify(cells));
			}
		}
		await page.screenshot({ path: path.join(artifacts, 'luci-status.png'), fullPage: true });
	} else {
		const banner = await page.locator('#shadowmesh-not-running').textContent().catch(() => '');
		check('"Service not running" shown', /Service not running/.test(banner), banner);
		check('no peers listed', (await page.locator('#shadowmesh-peers tr[data-peer-id]').count()) === 0);
		await page.screenshot({ path: path.join(artifacts, 'luci-status-stopped.png'), fullPage: true });
	}
	// A read-only user: the status still loads, the key does not.
	await fetch(`http://127.0.0.1:${h.port}/harness/readonly`, { method: 'POST', body: JSON.stringify({ readOnly: true }) });
	check('a read-only user is refused the secret method', !('network_key' in (await ubus('secret'))));
	await page.reload();
	await page.waitForSelector('body[data-loaded], body[data-error]', { timeout: 40000 });
	await page.click('#shadowmesh-show-key');
	await page.waitForSelector('#shadowmesh-key-denied', { timeout: 20000 });
	check('a read-only user sees why the key is not shown', (await page.locator('#shadowmesh-network-key').count()) === 0);
	await fetch(`http://127.0.0.1:${h.port}/harness/readonly`, { method: 'POST', body: JSON.stringify({ readOnly: false }) });
}

(async () => {
	fs.mkdirSync(artifacts, { recursive: true });
	const h = await start({ bin: env.SM_BIN, uciDir: env.SM_UCI_DIR, rpcdConfig: env.SM_RPCD_CONFIG });
	const browser = await chromium.launch({
		executablePath: env.CHROMIUM || '/usr/bin/chromium',
		args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
			'--disable-component-update', '--disable-sync']
	});
	try {
		const context = await browser.newContext({
			viewport: { width: 1100, height: 800 },
			permissions: ['clipboard-read', 'clipboard-write']
		});
		const page = await context.newPage();
		page.on('pageerror', (e) => check('no page error', false, String(e)));
		if (phase === 'settings') await settings(page, h);
		else if (phase === 'status') await status(page, h, true);
		else if (phase === 'stopped') await status(page, h, false);
		else throw new Error('unknown phase ' + phase);
	} catch (e) {
		check('browser test ran to the end', false, e.stack || String(e));
	} finally {
		await browser.close();
		h.server.close();
	}
	process.exit(failed ? 1 : 0);
})();
