'use strict';
'require view';
'require rpc';
'require poll';
'require dom';
'require ui';
'require uqr';

// Status: Start, Stop and Restart, what waits for a restart, this gateway, the network key and
// the join string (behind a Show button: copy buttons and a QR code for the next gateway) and
// the live peers. The status comes from `ubus call shadowmesh status`,
// answered by `shadowmesh rpcd call status` from the daemon's control socket; when the daemon
// does not answer, the page says so and still shows who this gateway is. The key is never in
// the status: it comes from the `secret` method, which only the write ACL grants, with the join
// string the daemon makes from the addresses other gateways can reach (never the browser's
// idea of this router's name).

var callStatus = rpc.declare({
	object: 'shadowmesh',
	method: 'status'
});

var callSecret = rpc.declare({
	object: 'shadowmesh',
	method: 'secret'
});

// LuCI's own init-script call (luci-base's rpcd plugin), as on System > Startup; the write ACL
// grants it.
var callInitAction = rpc.declare({
	object: 'luci',
	method: 'setInitAction',
	params: ['name', 'action'],
	expect: { result: false }
});

function fmtAgo(ts) {
	if (!ts)
		return '-';
	var s = Math.max(0, Math.floor(Date.now() / 1000) - ts);
	if (s < 60)
		return _('%ds ago').format(s);
	if (s < 3600)
		return _('%dm ago').format(Math.floor(s / 60));
	return _('%dh ago').format(Math.floor(s / 3600));
}

function copyText(text, button) {
	var done = function() { button.textContent = _('Copied'); };
	// LuCI is often reached over plain HTTP, where the clipboard API is missing (or refused).
	var fallback = function() {
		var t = E('textarea', { 'style': 'position:absolute;left:-9999px' }, [text]);
		document.body.appendChild(t);
		t.select();
		document.execCommand('copy');
		document.body.removeChild(t);
		done();
	};
	if (navigator.clipboard && window.isSecureContext)
		return navigator.clipboard.writeText(text).then(done, fallback);
	fallback();
}

// The status answer, or what to show when ubus gave none.
function unreachable(st) {
	return (st && typeof st == 'object') ? st : {
		running: false,
		reason: _('no answer from the ubus object "shadowmesh" (is the package installed, and rpcd reloaded?)')
	};
}

// `text` in a code block with a Copy button beside it.
function copyable(text, id, buttonId) {
	return E('div', { 'class': 'cbi-value' }, [
		E('code', { 'id': id, 'style': 'word-break:break-all' }, [text]), ' ',
		E('button', {
			'class': 'cbi-button cbi-button-action',
			'id': buttonId,
			'click': function(ev) { copyText(text, ev.target); }
		}, [_('Copy')])
	]);
}

// Where other nodes see this gateway, and the NAT in front of it.
function publicAddress(d) {
	var nat = {
		'none': _('no NAT'),
		'endpoint-independent': _('behind NAT, one port for everyone'),
		'endpoint-dependent': _('behind NAT, another port per peer (symmetric)'),
		'unknown': _('NAT not known yet')
	}[d.nat] || d.nat || '';
	var addrs = (d.observed || []).join(', ') || _('not known yet');
	return nat ? '%s (%s)'.format(addrs, nat) : addrs;
}

// The router's port forward for this gateway (PCP or NAT-PMP), or why there is none.
function portMapping(pm) {
	if (pm.external)
		return _('%s forwarded by the router (%s)').format(pm.external, String(pm.protocol || '').toUpperCase());
	return pm.state == 'off' ? _('off') : pm.state;
}

// A member as the page names it: its name as this gateway's hosts file serves it (a name two
// gateways claim is suffixed there), else the name its record claims, else its PeerId's start.
function peerName(p) {
	return (p.dns_name || '').split('.')[0] || p.name || p.peer_id.slice(0, 12);
}

// Relaying: what this gateway carries for others, and the relays it keeps (behind a NAT) for
// members that cannot dial it.
function relaying(r, peers) {
	var name = function(id) {
		var p = (peers || []).filter(function(p) { return p.peer_id == id; })[0];
		return p ? peerName(p) : id.slice(0, 12);
	};
	var parts = [r.on ? _('relays for members: %d circuits').format((r.circuits || []).length) : _('does not relay')];
	if ((r.kept || []).length)
		parts.push(_('reached through %s').format(r.kept.map(name).join(', ')));
	return parts.join('; ');
}

// The exit this router's internet traffic goes through, and whether it is reachable.
function exitState(e, peers) {
	if (e.state == 'off')
		return _('none (local uplink)');
	var p = (peers || []).filter(function(p) { return p.peer_id == e.peer; })[0];
	var name = p ? peerName(p) : (e.peer || '').slice(0, 12);
	return {
		'up': _('through %s').format(name),
		'down': _('%s, unreachable').format(name),
		'unavailable': _('no member offers the exit asked for')
	}[e.state] || e.state;
}

function row(label, value, id) {
	return E('tr', { 'class': 'tr' }, [
		E('td', { 'class': 'td left', 'width': '33%' }, [label]),
		E('td', { 'class': 'td left', 'id': id }, [value == null || value === '' ? '-' : String(value)])
	]);
}

return view.extend({
	// A missing or slow ubus object (the package half-installed, rpcd not reloaded) is the
	// "not running" banner, not LuCI's error page.
	load: function() {
		return L.resolveDefault(callStatus(), null).then(unreachable);
	},

	// Start, stop or restart the service through procd, then show what the daemon says.
	initAction: function(action, button) {
		var self = this;
		button.disabled = true;
		return callInitAction('shadowmesh', action).then(function(ok) {
			if (!ok)
				throw new Error(_('the init script failed'));
		}).then(function() {
			return L.resolveDefault(callStatus(), null);
		}).then(function(s) {
			dom.content(self.box, self.renderStatus(unreachable(s)));
		}).catch(function(e) {
			button.disabled = false;
			ui.addNotification(null, E('p', { 'id': 'shadowmesh-init-error' }, [
				_('Could not %s the service: %s').format(action, e.message)
			]), 'danger');
		});
	},

	renderStatus: function(st) {
		var out = [], d = st.daemon || {}, self = this;
		var button = function(action, label, cls) {
			return E('button', {
				'class': 'cbi-button ' + cls,
				'id': 'shadowmesh-' + action,
				'click': function(ev) { return self.initAction(action, ev.target); }
			}, [label]);
		};

		if (!st.running) {
			// (rpcd's `error` starts with the words of the heading: said once.)
			var why = st.config_error || st.reason || String(st.error || '').replace(/^service not running:\s*/i, '');
			out.push(E('div', { 'class': 'alert-message warning', 'id': 'shadowmesh-not-running' }, [
				E('strong', {}, [_('Service not running')]),
				why ? ': ' + why : ''
			]));
		}

		var pending = (st.running && Array.isArray(d.restart_pending)) ? d.restart_pending : [];
		if (pending.length)
			out.push(E('div', { 'class': 'alert-message notice', 'id': 'shadowmesh-restart-pending' }, [
				E('strong', {}, [_('Restart needed')]), ': ', pending.join(', '), ' ',
				_('(changed in the configuration; the service uses the new values once it restarts)')
			]));

		out.push(E('div', { 'class': 'cbi-page-actions', 'id': 'shadowmesh-service', 'style': 'text-align:left' },
			st.running
				? [button('restart', _('Restart'), 'cbi-button-apply'), ' ', button('stop', _('Stop'), 'cbi-button-reset')]
				: [button('start', _('Start'), 'cbi-button-apply')]));

		out.push(E('h3', {}, [_('This gateway')]));
		out.push(E('table', { 'class': 'table', 'id': 'shadowmesh-self' }, [
			row(_('Name'), st.running ? (d.dns_name || d.name || null) : null, 'shadowmesh-name'),
			row(_('PeerId'), st.peer_id, 'shadowmesh-peer-id'),
			row(_('Role'), st.seed ? _('DHT-only seed') : _('Member'), 'shadowmesh-role'),
			row(_('Overlay IPv4'), d.overlay_ipv4 || st.overlay_ipv4, 'shadowmesh-ipv4'),
			row(_('Overlay IPv6'), d.overlay_ipv6 || st.overlay_ipv6, 'shadowmesh-ipv6'),
			row(_('Interface'), d.interface || st.interface, 'shadowmesh-interface'),
			row(_('Listening on'), d.listen || (st.listen_port ? ':' + st.listen_port : ''), 'shadowmesh-listen'),
			row(_('Seen from outside at'), st.running && d.observed ? publicAddress(d) : null, 'shadowmesh-observed'),
			row(_('Port mapping'), st.running && d.port_mapping ? portMapping(d.port_mapping) : null, 'shadowmesh-port-mapping'),
			row(_('Relaying'), st.running && d.relay ? relaying(d.relay, st.peers) : null, 'shadowmesh-relays'),
			row(_('Exit'), st.running && d.exit ? exitState(d.exit, st.peers) : null, 'shadowmesh-exit'),
			row(_('DHT size'), st.running ? d.dht_size : null, 'shadowmesh-dht-size'),
			row(_('Peers connected'), st.running && d.peers_connected != null ? d.peers_connected + ' / ' + d.peers_known : null, 'shadowmesh-connected'),
			row(_('Uptime'), st.running ? '%t'.format(d.uptime_s) : null, 'shadowmesh-uptime')
		]));

		if (!st.seed) {
			out.push(E('h3', {}, [_('Network key')]));
			out.push(E('p', {}, [_('Every gateway of this mesh needs this key. Scan the code on the next gateway, or copy the key into its Settings with this gateway as a bootstrap peer.')]));
			if (this.key) {
				var key = this.key, join = this.join;
				out.push(copyable(key, 'shadowmesh-network-key', 'shadowmesh-copy'));
				if (join) {
					out.push(E('p', {}, [_('Join string: paste it into "Join a mesh" on the next gateway\'s Settings page, or run %s there.').format('shadowmesh join \'…\'')]));
					out.push(copyable(join, 'shadowmesh-join', 'shadowmesh-copy-join'));
					var qr = E('div', { 'id': 'shadowmesh-qr', 'title': join, 'style': 'display:inline-block' });
					qr.innerHTML = uqr.renderSVG(join, { pixelSize: 4, ecc: 'M' });
					out.push(qr);
				} else {
					out.push(E('p', { 'id': 'shadowmesh-no-join' }, [
						_('No address other gateways could reach is known: set "Advertised addresses" in Settings to offer a join string.')
					]));
				}
			} else {
				out.push(E('div', { 'class': 'cbi-value', 'id': 'shadowmesh-key-hidden' }, [
					E('button', {
						'class': 'cbi-button cbi-button-action',
						'id': 'shadowmesh-show-key',
						'click': function(ev) {
							return callSecret().then(function(r) {
								if (!r || !r.network_key)
									throw new Error((r && r.error) || _('no key'));
								self.key = r.network_key;
								self.join = r.join || null;
								dom.content(self.box, self.renderStatus(st));
							}).catch(function() {
								dom.content(ev.target.parentNode, [
									E('em', { 'id': 'shadowmesh-key-denied' }, [_('Only users who may change the settings can see the key.')])
								]);
							});
						}
					}, [_('Show')])
				]));
			}
		}

		var peers = st.peers || [];
		var rows = [E('tr', { 'class': 'tr table-titles' }, [
			E('th', { 'class': 'th' }, [_('Name')]),
			E('th', { 'class': 'th' }, [_('Overlay address')]),
			E('th', { 'class': 'th' }, [_('Endpoint')]),
			E('th', { 'class': 'th' }, [_('Path')]),
			E('th', { 'class': 'th' }, [_('RTT')]),
			E('th', { 'class': 'th' }, [_('Traffic (rx / tx)')]),
			E('th', { 'class': 'th' }, [_('Last handshake')])
		])];
		peers.forEach(function(p) {
			rows.push(E('tr', { 'class': 'tr', 'data-peer-id': p.peer_id }, [
				E('td', { 'class': 'td', 'title': p.peer_id }, [peerName(p)]),
				E('td', { 'class': 'td' }, [[p.overlay_ipv4, p.overlay_ipv6].filter(Boolean).join(' ')]),
				E('td', { 'class': 'td' }, [p.endpoint || '-']),
				E('td', { 'class': 'td' }, [p.connected ? (p.path == 'relayed' ? _('relayed via %s').format((p.relay || '').slice(0, 12)) : _('direct')) : _('not connected')]),
				E('td', { 'class': 'td' }, [p.connected ? '%.1f ms'.format(p.rtt_ms) : '-']),
				E('td', { 'class': 'td' }, ['%1024.1mB / %1024.1mB'.format(+p.rx_bytes || 0, +p.tx_bytes || 0)]),
				E('td', { 'class': 'td' }, [fmtAgo(p.last_handshake)])
			]));
		});
		if (!peers.length)
			rows.push(E('tr', { 'class': 'tr placeholder' }, [
				E('td', { 'class': 'td', 'colspan': '7' }, [st.running ? _('No peers yet') : _('No peers: the service is not running')])
			]));
		out.push(E('h3', {}, [_('Peers')]));
		out.push(E('table', { 'class': 'table', 'id': 'shadowmesh-peers' }, rows));
		return out;
	},

	render: function(st) {
		var box = E('div', { 'id': 'shadowmesh-status' });
		var self = this;
		this.box = box;
		dom.content(box, this.renderStatus(st));
		poll.add(function() {
			return L.resolveDefault(callStatus(), null).then(function(s) {
				dom.content(box, self.renderStatus(unreachable(s)));
			});
		}, 5);
		return E('div', { 'class': 'cbi-map' }, [
			E('h2', {}, [_('ShadowMesh')]),
			box
		]);
	},

	handleSaveApply: null,
	handleSave: null,
	handleReset: null
});
