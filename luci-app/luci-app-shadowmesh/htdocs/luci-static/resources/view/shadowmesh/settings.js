'use strict';
'require view';
'require form';
'require network';
'require rpc';

var callStatus = rpc.declare({
	object: 'shadowmesh',
	method: 'status'
});

// Settings: every option of /etc/config/shadowmesh (openwrt-package/README.md has the schema).
// The validators mirror the daemon's strict parser (daemon/shadowmesh/src/config.rs), so a
// value the daemon would refuse is refused here, before saving.

function parseIPv4(s) {
	var m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
	if (!m)
		return null;
	var b = [];
	for (var i = 1; i <= 4; i++) {
		// Like Rust's Ipv4Addr parser: no leading zeros, each part 0-255.
		if ((m[i].length > 1 && m[i].charAt(0) == '0') || +m[i] > 255)
			return null;
		b.push(+m[i]);
	}
	return b;
}

function parseIPv6(s) {
	if (!/^[0-9a-fA-F:.]+$/.test(s) || s.split('::').length > 2)
		return null;
	var tail4 = null, m = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(s);
	if (m) {
		tail4 = parseIPv4(m[2]);
		if (!tail4)
			return null;
		s = m[1] + '0:0';
	}
	var halves = s.split('::'), groups = [];
	var head = halves[0] ? halves[0].split(':') : [];
	var rest = halves.length > 1 && halves[1] ? halves[1].split(':') : [];
	var all = head.concat(rest);
	for (var i = 0; i < all.length; i++)
		if (!/^[0-9a-fA-F]{1,4}$/.test(all[i]))
			return null;
	if (halves.length == 1 && all.length != 8)
		return null;
	if (halves.length == 2 && all.length > 7)
		return null;
	var fill = 8 - all.length;
	groups = head.concat(new Array(halves.length == 2 ? fill : 0).fill('0'), rest);
	var b = [];
	for (var j = 0; j < 8; j++) {
		var v = parseInt(groups[j], 16);
		b.push(v >> 8, v & 255);
	}
	if (tail4)
		b.splice(12, 4, tail4[0], tail4[1], tail4[2], tail4[3]);
	return b;
}

function parseIP(s) {
	return parseIPv4(s) || parseIPv6(s);
}

function isPort(s) {
	return /^\d{1,5}$/.test(s) && +s >= 1 && +s <= 65535;
}

// IP:PORT, IPv6 in brackets.
function parseSocket(s) {
	var m = /^\[([^\]]+)\]:(\d+)$/.exec(s) || /^([^:\[\]]+):(\d+)$/.exec(s);
	if (!m)
		return null;
	var ip = m[0].charAt(0) == '[' ? parseIPv6(m[1]) : parseIPv4(m[1]);
	return (ip && isPort(m[2])) ? ip : null;
}

// A DNS name (a home router's dynamic-DNS name) and a port, or IP:PORT; the daemon's
// parse_host_port (daemon/proto/src/join.rs) is the reference.
function isName(n) {
	n = n.replace(/\.$/, '');
	if (!n || n.length > 253 || /^[\d.]+$/.test(n))
		return false;
	return n.split('.').every(function(l) { return /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(l); });
}

function isHostPort(s) {
	if (parseSocket(s))
		return true;
	var m = /^([^:\[\]]+):(\d+)$/.exec(s);
	return !!(m && isName(m[1]) && isPort(m[2]));
}

// shadowmesh:join?network_key=HEX64&bootstrap=PEERID@HOST:PORT[&bootstrap=…] (the status page of a
// member shows it; daemon/proto/src/join.rs is the reference): { key, bootstrap } or a message.
function parseJoin(s) {
	var prefix = 'shadowmesh:join?', key = null, boot = [];
	s = String(s).trim();
	if (s.indexOf(prefix) != 0)
		return _('A join string starts with %s').format(prefix);
	var pairs = s.substring(prefix.length).split('&');
	for (var i = 0; i < pairs.length; i++) {
		if (!pairs[i])
			continue;
		var eq = pairs[i].indexOf('='), k = eq < 0 ? pairs[i] : pairs[i].substring(0, eq), v = eq < 0 ? '' : pairs[i].substring(eq + 1);
		try { v = decodeURIComponent(v); } catch (e) { return _('A bad %-escape in the join string'); }
		if (k == 'network_key') {
			if (key != null || !/^[0-9a-fA-F]{64}$/.test(v))
				return _('The join string needs network_key with 64 hexadecimal digits, once');
			key = v.toLowerCase();
		}
		else if (k == 'bootstrap') {
			var r = V.bootstrap(v);
			if (r !== true)
				return r;
			if (boot.indexOf(v) < 0)
				boot.push(v);
		}
	}
	if (key == null)
		return _('The join string needs network_key with 64 hexadecimal digits, once');
	if (!boot.length || boot.length > 8)
		return _('The join string needs 1 to 8 bootstrap gateways');
	return { key: key, bootstrap: boot };
}

var V = {
	port: function(v) {
		return isPort(v) || _('Expecting a port number from 1 to 65535');
	},
	ip: function(v) {
		return !!parseIP(v) || _('Expecting an IPv4 or IPv6 address');
	},
	ifname: function(v) {
		return /^[A-Za-z0-9_.-]{1,15}$/.test(v) || _('An interface name is 1-15 of A-Z a-z 0-9 _ . -');
	},
	path: function(v) {
		return /^\/[^\s']*$/.test(v) || _('Expecting an absolute path');
	},
	mtu: function(v) {
		return (/^\d+$/.test(v) && +v >= 1280 && +v <= 9000) || _('Expecting an MTU from 1280 to 9000');
	},
	key: function(v) {
		return /^[0-9a-fA-F]{64}$/.test(v) || _('Expecting 64 hexadecimal digits');
	},
	peerid: function(v) {
		return /^[0-9a-fA-F]{64}$/.test(v) || _('A PeerId is 64 hexadecimal digits');
	},
	bootstrap: function(v) {
		var at = v.indexOf('@');
		if (at < 0)
			return _('Expecting PEERID@IP:PORT or PEERID@NAME:PORT');
		if (!/^[0-9a-fA-F]{64}$/.test(v.substring(0, at)))
			return _('The PeerId before @ must be 64 hexadecimal digits');
		return isHostPort(v.substring(at + 1)) || _('Expecting IP:PORT (IPv6 in brackets) or NAME:PORT after @');
	},
	hostport: function(v) {
		return isHostPort(v) || _('Expecting IP:PORT (IPv6 in brackets) or NAME:PORT');
	},
	cidr: function(v) {
		var m = /^([^/]+)\/(\d{1,3})$/.exec(v);
		if (!m)
			return _('Expecting ADDRESS/PREFIX, e.g. 192.168.1.0/24');
		var b = parseIP(m[1]);
		if (!b)
			return _('Not an IP address');
		var len = +m[2];
		if (len > b.length * 8)
			return _('Prefix length above %d').format(b.length * 8);
		for (var i = 0; i < b.length; i++) {
			var keep = Math.max(0, Math.min(8, len - i * 8));
			if (b[i] & (0xff >> keep))
				return _('Host bits set (use the network address)');
		}
		return true;
	},
	label: function(v) {
		return /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(v) || _('A name is 1-63 of a-z 0-9 -, not starting or ending with -');
	},
	domain: function(v) {
		return (v.length <= 200 && v.split('.').every(function(l) { return /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(l); }))
			|| _('A domain is labels of a-z 0-9 - joined by dots');
	},
	overlay4: function(v) {
		var m = /^(\d+\.\d+)\.0\.0\/16$/.exec(v);
		var b = m && parseIPv4(m[1] + '.0.0');
		if (!b)
			return _('Expecting a /16 with a zero host part, e.g. 10.100.0.0/16');
		return (b[0] != 0 && b[0] != 127 && b[0] < 224 && !(b[0] == 169 && b[1] == 254)) ||
			_('Not a unicast range');
	}
};

// LuCI calls validate(section_id, value) after the option's datatype (if any) passed; an empty
// optional value is not ours to refuse. LuCI saves what was typed, untrimmed, and the daemon's
// parser would refuse a value with spaces around it at the next start: refused here.
function check(fn) {
	return function(section_id, value) {
		if (value == null || value === '')
			return true;
		value = String(value);
		if (value !== value.trim())
			return _('No spaces before or after the value');
		return fn(value);
	};
}

// LuCI checks a DynamicList's add field on keyup and blur only: a value pasted and confirmed
// with Enter is added unchecked, and an invalid value left in the field is dropped on Save
// without a word. A list option made with this checks every entry, and what is left in the add
// field, again when the form is saved, and names the first bad one.
function strictList(s, name, title, descr, fn) {
	var o = s.option(form.DynamicList, name, title, descr);
	var problem = function(section_id) {
		var el = o.getUIElement(section_id), node = el && el.node;
		if (!node)
			return null;
		var vals = Array.prototype.map.call(node.querySelectorAll('.item > input[type="hidden"]'),
			function(i) { return i.value; });
		var add = node.querySelector('.add-item input[type="text"]');
		if (add && add.value.trim() !== '')
			vals.push(add.value);
		for (var i = 0; i < vals.length; i++) {
			var r = check(fn)(section_id, vals[i]);
			if (r !== true)
				return '"%s": %s'.format(vals[i], r);
		}
		return null;
	};
	o.validate = check(fn);
	o.isValid = function(section_id) {
		return problem(section_id) == null && form.DynamicList.prototype.isValid.call(this, section_id);
	};
	o.getValidationError = function(section_id) {
		return problem(section_id) || form.DynamicList.prototype.getValidationError.call(this, section_id);
	};
	return o;
}

// The router's own LAN networks as route suggestions: each network's IPv4 subnets (from netifd,
// through LuCI's network model), except networks with a default route (uplinks) and the mesh's
// own interface. [{ cidr, name }].
function lanPrefixes(nets) {
	var out = [];
	(nets || []).forEach(function(net) {
		var name = net.getName();
		if (name == 'loopback' || name == 'shadowmesh' || net.getGatewayAddr())
			return;
		net.getIPAddrs().forEach(function(a) {
			var m = /^([^/]+)\/(\d+)$/.exec(a), b = m && parseIPv4(m[1]), len = m ? +m[2] : 0;
			if (!b || len < 8 || len > 30)
				return;
			var n = ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) & (~0 << (32 - len));
			var cidr = [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.') + '/' + len;
			if (!out.some(function(p) { return p.cidr == cidr; }))
				out.push({ cidr: cidr, name: name });
		});
	});
	return out;
}

return view.extend({
	// Without the network status ACL (luci-base grants it to a full login) there are simply no
	// suggestions.
	// The router's networks (route suggestions) and, from the running daemon, the members
	// that offer an exit (the exit's choices).
	load: function() {
		return Promise.all([
			L.resolveDefault(network.getNetworks(), []),
			L.resolveDefault(callStatus(), {})
		]);
	},

	render: function(data) {
		var nets = data[0], st = data[1] || {};
		var m, s, o;

		m = new form.Map('shadowmesh', _('ShadowMesh'),
			_('A decentralized post-quantum mesh VPN. Gateways with the same network key find each other through the DHT and carry their LANs to each other.'));

		s = m.section(form.TypedSection, 'shadowmesh', _('Gateway'));
		s.anonymous = true;
		s.addremove = false;

		o = s.option(form.Flag, 'enabled', _('Enabled'));
		o.default = o.enabled;
		o.rmempty = false;

		o = s.option(form.Flag, 'seed', _('DHT-only seed'),
			_('A seed helps gateways find each other but carries no packets and needs no network key.'));
		o.default = o.disabled;

		o = s.option(form.Value, 'network_key', _('Network key'),
			_('The mesh\'s shared secret, 64 hex digits. Generated on first start; copy it to every gateway of the mesh (Status page).'));
		o.password = true;
		o.datatype = 'and(hexstring,length(64))';
		o.validate = check(V.key);

		o = s.option(form.Value, 'listen_address', _('Listen address'),
			_('UDP address of the QUIC endpoint; :: for IPv6 too.'));
		o.placeholder = '0.0.0.0';
		o.datatype = 'ipaddr(1)';
		o.validate = check(V.ip);

		o = s.option(form.Value, 'listen_port', _('Listen port'));
		o.placeholder = '4433';
		o.datatype = 'and(port,min(1))';
		o.validate = check(V.port);

		o = s.option(form.Value, 'interface', _('Interface name'), _('The TUN device.'));
		o.placeholder = 'smesh0';
		o.datatype = 'netdevname';
		o.validate = check(V.ifname);

		o = s.option(form.Value, 'mtu', _('Tunnel MTU'));
		o.placeholder = '1376';
		o.datatype = 'and(uinteger,range(1280,9000))';
		o.validate = check(V.mtu);

		strictList(s, 'bootstrap', _('Bootstrap peers'),
			_('Seeds or gateways to join the DHT through: PEERID@IP:PORT, or PEERID@NAME:PORT for a gateway reached by a (dynamic) DNS name.'), V.bootstrap);

		// Not an option of its own: a join string sets network_key and adds bootstrap peers. It
		// comes after both (LuCI parses options in order, and each writes what it holds).
		o = s.option(form.Value, '_join', _('Join a mesh'),
			_('Paste the join string from the Status page of a gateway of the mesh (behind "Show"): it sets the network key and adds that gateway as a bootstrap peer.'));
		o.placeholder = 'shadowmesh:join?network_key=…&bootstrap=…';
		o.cfgvalue = function() { return null; };
		o.validate = function(section_id, value) {
			if (value == null || value === '')
				return true;
			var j = parseJoin(value);
			return typeof(j) == 'string' ? j : true;
		};
		o.write = function(section_id, value) {
			var j = parseJoin(value || '');
			if (typeof(j) == 'string')
				return;
			var have = L.toArray(this.map.data.get('shadowmesh', section_id, 'bootstrap'));
			j.bootstrap.forEach(function(b) { if (have.indexOf(b) < 0) have.push(b); });
			this.map.data.set('shadowmesh', section_id, 'network_key', j.key);
			this.map.data.unset('shadowmesh', section_id, 'seed');
			this.map.data.set('shadowmesh', section_id, 'bootstrap', have);
		};
		o.remove = function() {};

		o = strictList(s, 'route', _('Advertised LAN routes'),
			_('Prefixes this gateway carries for the mesh: pick one of this router\'s networks or type one, e.g. 192.168.1.0/24.'), V.cidr);
		lanPrefixes(nets).forEach(function(p) { o.value(p.cidr, '%s (%s)'.format(p.cidr, p.name)); });

		o = s.option(form.Flag, 'accept_routes', _('Accept members\' routes'),
			_('Install the LAN routes other gateways advertise. Never a default route, the overlay, this router\'s own networks, or a prefix another gateway already holds.'));
		o.default = o.enabled;

		strictList(s, 'accept_route', _('Accept routes only inside'),
			_('If any are listed, a member\'s LAN route is installed only when it lies inside one of these, e.g. 192.168.0.0/16.'), V.cidr);

		o = s.option(form.Value, 'overlay_ipv4', _('Overlay IPv4 network'),
			_('The /16 members\' tunnel addresses come from; the same on every gateway of the mesh, and none of this router\'s own networks. The daemon refuses to start if it overlaps a LAN.'));
		o.placeholder = '10.100.0.0/16';
		o.validate = check(V.overlay4);

		strictList(s, 'advertise', _('Advertised addresses'),
			_('IP:PORT published in this gateway\'s record, or NAME:PORT (a dynamic-DNS name, resolved now and every 5 minutes; default: the listen address if it is specific).'), V.hostport);

		strictList(s, 'allowed_peer', _('Allowed peers'),
			_('If any are listed, only these PeerIds get a session.'), V.peerid);

		o = s.option(form.Flag, 'port_mapping', _('Port mapping'),
			_('Ask the router in front of this one to forward the listen port (PCP, then NAT-PMP), so that gateways behind other NATs reach it directly.'));
		o.default = o.enabled;

		o = s.option(form.Flag, 'exit_node', _('Offer as exit'),
			_('Let members send their internet traffic through this router (it forwards and masquerades it to its uplink; the firewall must let the tunnel forward to wan).'));
		o.default = o.disabled;

		o = s.option(form.Value, 'exit', _('Exit'),
			_('Send this router\'s and its LAN\'s internet traffic through a member that offers itself as exit: its PeerId, or auto (the nearest). The LAN must be among the advertised routes. Empty: the local uplink.'));
		o.value('', _('none (local uplink)'));
		o.value('auto', _('auto (the nearest exit)'));
		(st.peers || []).filter(function(p) { return p.exit; }).forEach(function(p) {
			o.value(p.peer_id, '%s (%s)'.format(p.name || p.peer_id.slice(0, 12), p.overlay_ipv4 || ''));
		});
		o.validate = check(function(v) { return v == 'auto' || V.peerid(v); });

		strictList(s, 'exit_bypass', _('Not through the exit'),
			_('Destinations that keep the local uplink while an exit is in use, e.g. 203.0.113.0/24.'), V.cidr);

		o = s.option(form.Flag, 'exit_fail', _('Use the uplink while the exit is down'),
			_('Off (the default): internet traffic is dropped while the exit is unreachable, so nothing leaves by the local uplink.'));
		o.enabled = 'open';
		o.disabled = 'closed';
		o.default = o.disabled;

		o = s.option(form.ListValue, 'log_level', _('Log level'));
		['error', 'warn', 'info', 'debug', 'trace', 'off'].forEach(function(l) { o.value(l); });
		o.default = 'info';

		o = s.option(form.Flag, 'tunnel', _('Carry packets'),
			_('Off: a member without a TUN device (DHT and sessions only).'));
		o.default = o.enabled;

		o = s.option(form.Flag, 'fast_lane', _('Fast lane'),
			_('Data frames as plain UDP next to QUIC when the other gateway offers it too (faster); off: inside QUIC datagrams.'));
		o.default = o.enabled;

		o = s.option(form.Flag, 'offload', _('TUN offload'),
			_('Large TCP packets cross the kernel boundary once and are cut or joined in the daemon (x86 and ARM builds).'));
		o.default = o.enabled;

		o = s.option(form.Flag, 'lan_discovery', _('LAN discovery'),
			_('Find this mesh\'s gateways on the LAN by multicast (sealed under the network key); members on one LAN talk over it.'));
		o.default = o.enabled;

		strictList(s, 'discovery_interface', _('Discovery interfaces'),
			_('Where to announce and listen (default: br-lan); never the WAN.'), V.ifname);

		o = s.option(form.Value, 'name', _('Name'),
			_('This gateway\'s name in the mesh: NAME.DOMAIN for the other gateways\' LANs (default: the system hostname).'));
		o.validate = check(V.label);

		o = s.option(form.Value, 'domain', _('Domain'),
			_('Gateways are NAME.DOMAIN, their shared hosts HOST.NAME.DOMAIN.'));
		o.placeholder = 'mesh';
		o.validate = check(V.domain);

		o = s.option(form.Flag, 'share_lan_names', _('Share LAN host names'),
			_('The other gateways serve this LAN\'s DHCP hosts as HOST.NAME.DOMAIN.'));
		o.default = o.disabled;

		o = s.option(form.Flag, 'plain_udp', _('Plain UDP calls'),
			_('For platforms where UDP control messages fail (emulators).'));
		o.default = o.disabled;

		o = s.option(form.Value, 'key_file', _('Identity key file'),
			_('Created on first start with mode 0600, never overwritten; kept across sysupgrade.'));
		o.placeholder = '/etc/shadowmesh/key';
		o.validate = check(V.path);

		o = s.option(form.Value, 'state_dir', _('State directory'),
			_('Routing-table cache and the control socket.'));
		o.placeholder = '/var/lib/shadowmesh';
		o.validate = check(V.path);

		return m.render();
	}
});
