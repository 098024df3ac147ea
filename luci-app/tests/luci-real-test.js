// The views inside LuCI's own framework (luci-server.js) in headless Chromium.
//
// usage: node luci-real-test.js settings|status|stopped|apply
// env: SM_LUCI (LuCI's source tree: modules/, libs/, themes/), SM_BIN, SM_UCI_DIR (with the
//      fixture `shadowmesh` file), SM_RPCD_CONFIG, SM_ARTIFACTS (screenshots); for status and
//      stopped SM_EXPECT (JSON: self, network_key, join, restart_pending, peers [{peer_id, ipv4}])
//      and SM_DAEMON_LOG (the daemon's output); for apply SM_PROCD_ROOT (an image root run by
//      procd-service, whose etc/config is SM_UCI_DIR), SM_PROCD_NETNS and SM_PROCD_ADDR (an
//      address of that namespace) and SM_PEER (PEERID@IP:PORT of a member to bootstrap from).
// Prints one "ok"/"FAIL" line per check; exits 1 if any failed.
'use strict';
const path = require('path');
const fs = require('fs');
const { chromium } = require('playwright-core');
const { execFileSync } = require('child_process');
const crypto = require('crypto');
const { start, parseUci } = require('./luci-server');

const phase = process.argv[2];
const env = process.env;
let failed = 0;
const check = (name, cond, detail) => {
	console.log((cond ? 'ok   ' : 'FAIL ') + name + (cond ? '' : ': ' + (detail || '')));
	if (!cond) failed++;
};
const get = async (h, p) => (await fetch(`http://127.0.0.1:${h.port}${p}`)).json();
const post = (h, p, body) => fetch(`http://127.0.0.1:${h.port}${p}`, { method: 'POST', body: JSON.stringify(body) });
// The rpcd plugin's status answer for the config at `file`, as the status page gets it.
const rpcdStatus = (file) => JSON.parse(execFileSync(env.SM_BIN, ['rpcd', '--config', file, 'call', 'status'], { encoding: 'utf8' }));
const field = (opt) => `.cbi-map [data-name="${opt}"]`;
// LuCI's Save (stages through ubus uci set/delete); waits for its spinner to go.
async function save(page) {
	await page.click('.cbi-page-actions .cbi-button-save');
	await page.waitForFunction(() => !document.querySelector('.cbi-page-actions .spinning'), null, { timeout: 10000 });
	await page.waitForTimeout(300);
}
// The modal LuCI raises when a save is refused: its text, then dismissed.
async function refusal(page) {
	const modal = page.locator('#modal_overlay .modal');
	await modal.waitFor({ timeout: 5000 }).catch(() => {});
	const text = (await modal.innerText().catch(() => '')) || '';
	await page.locator('#modal_overlay button', { hasText: 'Dismiss' }).click().catch(() => {});
	return text;
}
// Types into a DynamicList's add field and confirms with Enter, as a user adds an entry, or
// leaves it there and clicks elsewhere (`confirm` false). A list with suggestions has a
// drop-down: it is opened first and the entry typed into its "custom" field.
async function addItem(page, opt, value, confirm = true) {
	const dropdown = page.locator(`${field(opt)} .add-item .cbi-dropdown`);
	let input = page.locator(`${field(opt)} .add-item input[type="text"]`);
	if (await dropdown.count()) {
		await dropdown.click();
		input = page.locator(`${field(opt)} .add-item ul.dropdown .create-item-input`);
	}
	await input.fill(value);
	if (confirm) await input.press('Enter');
	else await page.click('.cbi-map > h2');
}
const items = (page, opt) => page.$$eval(`${field(opt)} .item > input[type="hidden"]`, (l) => l.map((i) => i.value));

// Loads a view; returns the console errors and uncaught exceptions seen while it rendered.
async function open(page, h, view, ready) {
	const errors = [];
	page.removeAllListeners('console');
	page.removeAllListeners('pageerror');
	page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
	page.on('pageerror', (e) => errors.push(String(e)));
	await page.goto(`http://127.0.0.1:${h.port}/cgi-bin/luci/admin/vpn/shadowmesh/${view}`);
	// (24.10's luci.js has no L.loaded: the view's own content replacing the spinner is the sign.)
	await page.waitForFunction((sel) => window.L && document.querySelector(sel) && !document.querySelector('#view > .spinning'),
		ready || '#view .cbi-map', { timeout: 40000 });
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

	// Every value of the file is in the form.
	const file = path.join(env.SM_UCI_DIR, 'shadowmesh');
	const fixture = parseUci(fs.readFileSync(file, 'utf8')).main;
	for (const opt of ['network_key', 'listen_address', 'listen_port', 'interface', 'mtu', 'key_file', 'state_dir']) {
		const v = await page.inputValue(`${field(opt)} input:not([type="hidden"])`);
		check(`form shows ${opt} = ${fixture[opt]}`, v === fixture[opt], `form has ${JSON.stringify(v)}`);
	}
	check('form shows log_level', (await page.inputValue(`${field('log_level')} select`)) === fixture.log_level);
	for (const [opt, want] of [['enabled', true], ['seed', false], ['tunnel', true], ['lan_discovery', false], ['plain_udp', false]])
		check(`form shows flag ${opt} = ${want}`, (await page.isChecked(`${field(opt)} input[type="checkbox"]`)) === want);
	for (const opt of ['bootstrap', 'route', 'allowed_peer'])
		check(`form shows list ${opt}`, JSON.stringify(await items(page, opt)) === JSON.stringify(fixture[opt]), JSON.stringify(await items(page, opt)));

	// A bad list entry, confirmed with Enter or left in the add field, is never saved, and the
	// refusal names it with the reason.
	const drop = async (opt, v) => {
		const item = page.locator(`${field(opt)} .item:has(> input[value="${v}"])`);
		if (await item.count()) await item.first().press('Delete');
		await page.$$eval(`${field(opt)} .add-item input[type="text"]`, (l) => l.forEach((i) => { i.value = ''; }));
	};
	for (const [opt, v, why] of [['route', '192.168.20.1/24', /Host bits/], ['bootstrap', 'not-a-peer', /PEERID@IP:PORT/]]) {
		await addItem(page, opt, v);
		await save(page);
		let text = await refusal(page);
		check(`${opt} "${v}" confirmed with Enter: Save refused, naming it and why`, text.includes(`"${v}"`) && why.test(text)
			&& (await get(h, '/harness/staged')).length === 0, text);
		await drop(opt, v);
		await addItem(page, opt, v, false);
		await save(page);
		text = await refusal(page);
		check(`${opt} "${v}" left in the add field: Save refused, naming it`, text.includes(`"${v}"`) && (await get(h, '/harness/staged')).length === 0, text);
		await drop(opt, v);
	}
	for (const [opt, v] of [['listen_port', '70000'], ['overlay_ipv4', '10.100.0.0/24']]) {
		await page.fill(`${field(opt)} input`, v);
		await page.locator(`${field(opt)} input`).blur();
		check(`${opt} ${v} is marked invalid`, (await page.locator(`${field(opt)} input.cbi-input-invalid`).count()) === 1);
	}
	await save(page);
	let text = await refusal(page);
	check('Save with invalid fields is refused and says why', /invalid input value/.test(text), text);
	check('nothing was staged', (await get(h, '/harness/staged')).length === 0, JSON.stringify(await get(h, '/harness/staged')));

	// A trailing space is refused, never saved.
	const port = page.locator(`${field('listen_port')} input`);
	await page.fill(`${field('overlay_ipv4')} input`, '');
	await port.fill('4501 ');
	await port.blur();
	await save(page);
	text = await refusal(page);
	check('a value with a trailing space is refused (nothing staged)', /Listen port/.test(text) && (await get(h, '/harness/staged')).length === 0, text);

	// Fixed: the typed values, exactly, as UCI changes.
	await port.fill('4501');
	await port.blur();
	// The routes offer this router's LAN networks (not its uplink, loopback or the mesh's own).
	await page.locator(`${field('route')} .add-item .cbi-dropdown`).click();
	const offered = await page.$$eval(`${field('route')} .add-item ul.dropdown li[data-value]`, (l) => l.map((i) => i.dataset.value).filter((v) => v !== '-'));
	check('routes offer the router\'s LAN networks', JSON.stringify(offered.sort()) === JSON.stringify(['192.168.1.0/24', '192.168.3.0/24']), JSON.stringify(offered));
	await page.locator(`${field('route')} .add-item ul.dropdown li[data-value="192.168.1.0/24"]`).click();
	await page.locator(`${field('bootstrap')} .item`).last().press('Delete');
	await page.selectOption(`${field('log_level')} select`, 'info');
	await save(page);
	const staged = await get(h, '/harness/staged');
	const has = (c) => staged.some((x) => JSON.stringify(x) === JSON.stringify(c));
	check('Save stages the typed values exactly',
		has(['shadowmesh', 'set', 'main', 'listen_port', '4501']) && has(['shadowmesh', 'set', 'main', 'log_level', 'info'])
		&& has(['shadowmesh', 'set', 'main', 'route', fixture.route.concat(['192.168.1.0/24'])])
		&& (has(['shadowmesh', 'remove', 'main', 'bootstrap']) || has(['shadowmesh', 'set', 'main', 'bootstrap', []])), JSON.stringify(staged));
	// LuCI's flags write (or remove, at their default) on every save: the meaning must not change.
	const defaults = { enabled: '1', seed: '0', tunnel: '1', lan_discovery: '1', fast_lane: '1', offload: '1', plain_udp: '0', accept_routes: '1', share_lan_names: '0' };
	const changed = staged.filter((c) => !['listen_port', 'log_level', 'route', 'bootstrap'].includes(c[3])).filter((c) => {
		const before = fixture[c[3]] ?? defaults[c[3]];
		const after = c[1] === 'remove' ? defaults[c[3]] : c[4];
		return before === undefined || String(before) !== String(after);
	});
	check('nothing else changes meaning (only LuCI\'s flag normalisation besides them)', changed.length === 0, JSON.stringify(changed));

	// Save & Apply commits them, and the daemon's parser takes the file.
	await page.click('.cbi-page-actions .cbi-button-apply');
	for (let i = 0; i < 50 && (await get(h, '/harness/applied')).length === 0; i++) await page.waitForTimeout(200);
	const applied = await get(h, '/harness/applied');
	text = fs.readFileSync(file, 'utf8');
	check('Save & Apply commits the changes', applied.length === 1 && text.includes("option listen_port '4501'")
		&& text.includes("list route '192.168.1.0/24'") && text.includes("option log_level 'info'") && !text.includes('list bootstrap'), JSON.stringify(applied) + text);
	const st = rpcdStatus(file);
	check('the daemon\'s parser accepts the saved file', !st.config_error && st.listen_port === 4501, JSON.stringify(st));

	// "Join a mesh": a join string sets the key and adds the gateway to the bootstrap peers.
	await open(page, h, 'settings');
	const join = page.locator(`${field('_join')} input`);
	await join.fill('shadowmesh:join?network_key=12');
	await join.blur();
	check('a bad join string is marked', (await page.locator(`${field('_join')} .cbi-input-invalid`).count()) === 1);
	const peer = 'cd'.repeat(32) + '@192.0.2.9:4433';
	await join.fill(`shadowmesh:join?network_key=${'ab'.repeat(32)}&bootstrap=${encodeURIComponent(peer)}`);
	await join.blur();
	await save(page);
	const staged2 = await get(h, '/harness/staged');
	const set = (opt) => staged2.filter((c) => c[1] === 'set' && c[3] === opt).map((c) => c[4]).pop();
	check('a join string sets network_key and adds the bootstrap gateway',
		set('network_key') === 'ab'.repeat(32) && JSON.stringify(set('bootstrap')) === JSON.stringify([peer]),
		JSON.stringify(staged2));
	check('the join string itself is not stored', !staged2.some((c) => c[3] === '_join'), JSON.stringify(staged2));
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
		const relays = (await page.textContent('#shadowmesh-relays')) || '';
		check('whether it relays, from the daemon\'s status', /^(relays for members: \d+ circuits|does not relay)/.test(relays), relays);
		const exit = (await page.textContent('#shadowmesh-exit')) || '';
		check('the exit in use, from the daemon\'s status (none configured)', exit === 'none (local uplink)', exit);
		for (const p of exp.peers) {
			const row = page.locator(`#shadowmesh-peers tr[data-peer-id="${p.peer_id}"]`);
			const cells = (await row.count()) ? await row.locator('td').allTextContents() : [];
			const title = (await row.count()) ? await row.locator('td').first().getAttribute('title') : '';
			check(`peer ${p.peer_id.slice(0, 12)} listed by name (PeerId on hover) with its overlay address, path, RTT and traffic`,
				cells[0] === p.name && title === p.peer_id && cells[1].startsWith(p.ipv4) && cells[3] === 'direct' && / ms$/.test(cells[4])
				&& /^[\d.]+ [KMGT]?i?B \/ [\d.]+ [KMGT]?i?B$/.test(cells[5]),
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
	await page.click('#shadowmesh-copy');
	// The clipboard write is asynchronous: wait for what it put there.
	let copied = '';
	for (let i = 0; i < 50 && copied !== key; i++) {
		copied = await page.evaluate(() => navigator.clipboard.readText().catch(() => ''));
		if (copied !== key) await page.waitForTimeout(100);
	}
	check('the copy button puts the network key on the clipboard', key && copied === key, JSON.stringify(copied));

	// The log view: LuCI's own reader shows the daemon's lines, to a read-only user too.
	await post(h, '/harness/readonly', { readOnly: true });
	const logErrors = await open(page, h, 'log', '#syslog, #logfile');
	const logText = async () => page.evaluate(() => (document.querySelector('#syslog, #logfile') || {}).value || '');
	let shown = await logText();
	for (let i = 0; i < 50 && !/listening on/.test(shown); i++) {
		await page.waitForTimeout(200);
		shown = await logText();
	}
	check('the log view shows the daemon\'s lines (read ACL only), with no console error',
		/shadowmesh\[\d+\]: .*member [0-9a-f]{64} listening on/.test(shown) && logErrors.length === 0,
		shown.slice(0, 300) + ' ' + logErrors.join(' | ') + ' ' + JSON.stringify((await get(h, '/harness/log')).denied));
	await page.screenshot({ path: path.join(env.SM_ARTIFACTS, `luci-real-log-${path.basename(env.SM_LUCI)}.png`) });

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
	await post(h, '/harness/readonly', { readOnly: false });
	await post(h, '/harness/object-missing', { missing: true });
	const errors2 = await open(page, h, 'status');
	const banner = (await page.locator('#shadowmesh-not-running').count()) === 1;
	check('no ubus object: "Service not running", not an error page', banner && !(await page.locator('.alert-message.error, .error').count()), errors2.join(' | '));
}

// The daemon stopped (rpcd answers, the daemon does not): the page says so, with the reason,
// and still names the gateway.
async function stopped(page, h) {
	const exp = JSON.parse(env.SM_EXPECT);
	const errors = await open(page, h, 'status');
	const banner = (await page.locator('#shadowmesh-not-running').textContent().catch(() => '')) || '';
	check('stopped: "Service not running" with the reason, no console error', /Service not running/.test(banner) && /connect|socket|No such file/i.test(banner) && errors.length === 0,
		banner + ' ' + errors.join(' | '));
	check('stopped: the gateway is still named (from its key file)', (await page.textContent('#shadowmesh-peer-id')) === exp.self);
	check('stopped: no peers listed', (await page.locator('#shadowmesh-peers tr[data-peer-id]').count()) === 0);
	check('stopped: Start offered, not Restart', (await page.locator('#shadowmesh-start').count()) === 1 && (await page.locator('#shadowmesh-restart').count()) === 0);
	await page.screenshot({ path: path.join(env.SM_ARTIFACTS, `luci-real-status-stopped-${path.basename(env.SM_LUCI)}.png`) });
}

// The fingerprint `status` gives for a network key (Config::started_json).
const keyId = (hex) => crypto.createHash('sha256').update(Buffer.concat([Buffer.from('shadowmesh network key id\0'), Buffer.from(hex, 'hex')])).digest('hex').slice(0, 16);

// Save & Apply of each option the daemon reads only at start, against a daemon that the procd
// stand-in runs from the same file: the init script's reload restarts it, and its `status`
// then reports the new value; an option applied in place is a SIGHUP to the same process.
async function apply(page, h) {
	const root = env.SM_PROCD_ROOT;
	const file = path.join(env.SM_UCI_DIR, 'shadowmesh');
	const actions = () => fs.readFileSync(path.join(root, 'procd/actions'), 'utf8').trim().split('\n');
	const pid = () => fs.readFileSync(path.join(root, 'procd/pid'), 'utf8').trim();
	const nk = 'ab'.repeat(32);
	// [option, kind, value typed, what `status` shows once the daemon runs it]
	const all = [
		['listen_port', 'text', '4501', (s) => s.listen_port === 4501],
		['listen_address', 'text', env.SM_PROCD_ADDR, (s) => s.listen_address === env.SM_PROCD_ADDR],
		['interface', 'text', 'smesh9', (s) => s.interface === 'smesh9'],
		['mtu', 'text', '1400', (s) => s.mtu === '1400'],
		['key_file', 'text', path.join(root, 'etc/shadowmesh/key2'), (s) => s.key_file === path.join(root, 'etc/shadowmesh/key2')],
		['state_dir', 'text', path.join(root, 'var/lib/shadowmesh2'), (s) => s.state_dir === path.join(root, 'var/lib/shadowmesh2')],
		['network_key', 'text', nk, (s) => s.network_key_id === keyId(nk)],
		['overlay_ipv4', 'text', '10.101.0.0/16', (s) => s.overlay_ipv4 === '10.101.0.0/16'],
		['bootstrap', 'list', env.SM_PEER, (s) => JSON.stringify(s.bootstrap) === JSON.stringify([env.SM_PEER])],
		['fast_lane', 'flag', false, (s) => s.fast_lane === false],
		['offload', 'flag', false, (s) => s.offload === false],
		['plain_udp', 'flag', true, (s) => s.plain_udp === true],
		['tunnel', 'flag', false, (s) => s.tunnel === false],
		['seed', 'flag', true, (s) => s.seed === true],
	];
	// LuCI's apply is the same code for every option: 24.10 runs a sample.
	const opts = path.basename(env.SM_LUCI) === 'master' ? all : all.filter((o) => ['listen_port', 'tunnel'].includes(o[0]));
	let done = 0;
	const applyNow = async () => {
		await page.click('.cbi-page-actions .cbi-button-apply');
		for (let i = 0; i < 100 && (await get(h, '/harness/procd')).length === done; i++) await page.waitForTimeout(100);
		done = (await get(h, '/harness/procd')).length;
	};
	const started = async (want, ms) => {
		let st = {};
		for (let t = 0; t < ms / 200; t++) {
			try { st = rpcdStatus(file); } catch (e) { st = { error: String(e) }; }
			if (want(st)) return st;
			await page.waitForTimeout(200);
		}
		return st;
	};

	// An option applied in place: SIGHUP, the same process.
	let st = await started((s) => s.running === true, 20000);
	const before = pid();
	await open(page, h, 'settings');
	await page.selectOption(`${field('log_level')} select`, 'debug');
	await applyNow();
	check('Save & Apply of log_level: SIGHUP to the running daemon, no restart', actions().pop() === 'hup' && pid() === before, actions().join(','));
	for (const [opt, kind, value, shows] of opts) {
		await open(page, h, 'settings');
		if (kind === 'text') await page.fill(`${field(opt)} input:not([type="hidden"])`, value);
		else if (kind === 'flag') await page.setChecked(`${field(opt)} input[type="checkbox"]`, value);
		else await addItem(page, opt, value);
		const prev = pid();
		await applyNow();
		const uci = parseUci(fs.readFileSync(file, 'utf8')).main[opt];
		const written = kind === 'flag' ? uci === (value ? '1' : '0') : kind === 'list' ? JSON.stringify(uci) === JSON.stringify([value]) : uci === value;
		st = await started((s) => s.running === true && s.daemon && s.daemon.started && shows(s.daemon.started), 20000);
		const runs = st.running === true && shows(st.daemon.started);
		check(`Save & Apply of ${opt}: the file has the typed value, procd restarts the daemon, and it runs it`,
			written && actions().pop() === 'restart' && pid() !== prev && runs,
			`file ${JSON.stringify(uci)}, actions ${actions().join(',')}, status ${JSON.stringify(st.daemon ? st.daemon.started : st).slice(0, 400)}`);
	}
	// Disabled: procd stops the instance; enabled again: it runs.
	for (const on of [false, true]) {
		await open(page, h, 'settings');
		await page.setChecked(`${field('enabled')} input[type="checkbox"]`, on);
		await applyNow();
		st = await started((s) => s.running === on, 20000);
		check(`Save & Apply of enabled=${on ? 1 : 0}: the daemon ${on ? 'runs again' : 'stops'}`, st.running === on && actions().pop() === (on ? 'start' : 'stop'),
			actions().join(',') + ' ' + JSON.stringify(st).slice(0, 200));
	}
	check('every apply ran the init script cleanly', (await get(h, '/harness/procd')).every((r) => r.status === 0), JSON.stringify(await get(h, '/harness/procd')));
}

(async () => {
	const h = await start({
		luci: env.SM_LUCI, bin: env.SM_BIN, uciDir: env.SM_UCI_DIR, rpcdConfig: env.SM_RPCD_CONFIG,
		daemonLog: env.SM_DAEMON_LOG, procdRoot: env.SM_PROCD_ROOT, procdNetns: env.SM_PROCD_NETNS
	});
	fs.mkdirSync(env.SM_ARTIFACTS, { recursive: true });
	// Nothing leaves the machine: no updates, no sync, no QUIC probing.
	const browser = await chromium.launch({
		executablePath: env.CHROMIUM || '/usr/bin/chromium',
		args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
			'--disable-component-update', '--disable-sync']
	});
	try {
		const context = await browser.newContext({
			viewport: { width: 1100, height: 900 },
			permissions: ['clipboard-read', 'clipboard-write']
		});
		const page = await context.newPage();
		if (phase === 'settings') await settings(page, h);
		else if (phase === 'status') await status(page, h);
		else if (phase === 'stopped') await stopped(page, h);
		else if (phase === 'apply') await apply(page, h);
		else throw new Error('phase: settings | status | stopped | apply');
	} catch (e) {
		check(`${phase} ran`, false, String(e && e.stack || e));
	} finally {
		await browser.close();
		h.server.close();
	}
	process.exit(failed ? 1 : 0);
})();
