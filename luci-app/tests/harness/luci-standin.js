// STAND-IN for the LuCI client API surface our views use. LuCI's JavaScript is in no package
// registry this project can reach, so this file provides, with LuCI's names and calling
// conventions: the `'require x'` module loader, E(), _() with String.prototype.format, L.bind,
// and the modules view, form (Map, TypedSection, Value, Flag, ListValue, DynamicList, with
// per-value validate(section_id, value)), uci (load/get/set/unset/save against the harness
// server, which applies the changes with the uci stand-in), rpc.declare (POSTed to the harness
// server, which runs the real rpcd exec plugin and enforces the app's ACL), poll, dom and uqr
// (the npm `uqr` package, which LuCI's own uqr.js is a port of).
'use strict';

(function() {
	function _(s) { return s; }
	String.prototype.format = function() {
		var args = arguments, i = 0;
		return this.replace(/%(\.\d+)?([sdft])/g, function(m, prec, t) {
			var v = args[i++];
			if (t == 't') {
				// LuCI's time interval: "1d 2h 3m 4s", leading zero units left out.
				var s = Math.floor(+v), d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, mn = Math.floor(s / 60) % 60;
				return (d ? d + 'd ' : '') + (d || h ? h + 'h ' : '') + (d || h || mn ? mn + 'm ' : '') + (s % 60) + 's';
			}
			if (t == 'd') return String(Math.floor(+v));
			if (t == 'f') return (+v).toFixed(prec ? +prec.substring(1) : 6);
			return String(v);
		});
	};

	function E(tag, attrs, children) {
		if (Array.isArray(tag)) { var frag = document.createDocumentFragment(); append(frag, tag); return frag; }
		var el = document.createElement(tag);
		if (Array.isArray(attrs) || typeof attrs == 'string' || attrs instanceof Node) { children = attrs; attrs = null; }
		for (var k in (attrs || {})) {
			var v = attrs[k];
			if (v == null) continue;
			if (typeof v == 'function') el.addEventListener(k, v);
			else el.setAttribute(k, v);
		}
		append(el, children);
		return el;
	}
	function append(el, c) {
		if (c == null) return;
		if (Array.isArray(c)) c.forEach(function(x) { append(el, x); });
		else el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
	}

	function post(url, body) {
		return fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) })
			.then(function(r) { return r.json().then(function(j) { if (!r.ok) throw new Error(j.error || r.statusText); return j; }); });
	}

	function extend(base, proto) {
		var C = function() { if (this.__init__) this.__init__.apply(this, arguments); };
		C.prototype = Object.create(base.prototype);
		for (var k in proto) C.prototype[k] = proto[k];
		C.prototype.constructor = C;
		C.extend = function(p) { return extend(C, p); };
		return C;
	}
	function Base() {}
	Base.extend = function(p) { return extend(Base, p); };

	// ---- uci -------------------------------------------------------------------------------
	var uci = {
		state: {}, changes: [],
		load: function(conf) {
			return fetch('/uci/' + conf).then(function(r) { return r.json(); })
				.then(function(s) { uci.state[conf] = s; });
		},
		sections: function(conf, type) {
			var s = uci.state[conf] || {};
			return Object.keys(s).map(function(k) { return s[k]; })
				.filter(function(x) { return !type || x['.type'] == type; })
				.sort(function(a, b) { return a['.index'] - b['.index']; });
		},
		get: function(conf, sid, opt) {
			var s = (uci.state[conf] || {})[sid];
			return s ? s[opt] : null;
		},
		set: function(conf, sid, opt, val) {
			uci.state[conf][sid][opt] = val;
			uci.changes.push(['set', conf, sid, opt, val]);
		},
		unset: function(conf, sid, opt) {
			delete uci.state[conf][sid][opt];
			uci.changes.push(['unset', conf, sid, opt]);
		},
		save: function() {
			var c = uci.changes;
			uci.changes = [];
			return post('/uci-save', c);
		}
	};

	// ---- rpc, poll, dom, ui, view ----------------------------------------------------------
	var rpc = {
		declare: function(d) {
			return function() {
				var params = {};
				(d.params || []).forEach(function(p, i) { params[p] = arguments[i]; }, arguments);
				return post('/ubus', { object: d.object, method: d.method, params: params }).then(function(r) {
					if (!d.expect) return r;
					var k = Object.keys(d.expect)[0];
					return (k in r) ? r[k] : d.expect[k];
				});
			};
		}
	};
	var polls = [];
	var poll = {
		add: function(fn, interval) {
			polls.push(fn);
			setInterval(fn, (interval || 5) * 1000);
		}
	};
	window.__pollNow = function() { return Promise.all(polls.map(function(f) { return f(); })); };
	var dom = {
		content: function(node, children) {
			while (node.firstChild) node.removeChild(node.firstChild);
			append(node, children);
			return node;
		},
		append: function(node, children) { append(node, children); return node; }
	};
	var ui = {
		addNotification: function(title, children, cls) {
			var n = E('div', { 'class': 'alert-message ' + (cls || ''), 'id': 'notification' }, [title ? E('h4', {}, [title]) : null, children]);
			document.getElementById('notifications').appendChild(n);
			return n;
		}
	};
	var view = Base.extend({
		load: function() { return null; },
		handleSave: function() {
			var maps = document.querySelectorAll('#maincontent .cbi-map');
			return Promise.all(Array.prototype.map.call(maps, function(m) { return m.__map ? m.__map.save() : null; }));
		}
	});

	// ---- form ------------------------------------------------------------------------------
	var AbstractValue = Base.extend({
		__init__: function(map, section, name, title, description) {
			this.map = map; this.section = section; this.option = name;
			this.title = title; this.description = description;
			this.rmempty = true; this.widgets = {};
		},
		cfgvalue: function(sid) {
			var v = uci.get(this.map.config, sid, this.option);
			return v == null ? this.default : v;
		},
		validateOne: function(sid, v) {
			return this.validate ? this.validate(sid, v) : true;
		},
		// Marks the widget; returns the error message or null.
		check: function(sid) {
			var self = this, err = null;
			this.inputs(sid).forEach(function(input) {
				var r = self.validateOne(sid, input.value);
				var bad = r !== true;
				input.classList.toggle('cbi-input-invalid', bad);
				var msg = input.parentNode.querySelector('.cbi-value-error');
				if (msg) msg.textContent = bad ? r : '';
				if (bad && !err) err = r;
			});
			return err;
		},
		inputs: function(sid) { return [this.widgets[sid]]; },
		renderRow: function(sid) {
			var field = this.renderWidget(sid);
			var self = this;
			field.addEventListener('input', function() { self.check(sid); });
			return E('div', { 'class': 'cbi-value', 'data-name': this.option }, [
				E('label', { 'class': 'cbi-value-title' }, [this.title]),
				E('div', { 'class': 'cbi-value-field' }, [field,
					this.description ? E('div', { 'class': 'cbi-value-description' }, [this.description]) : null])
			]);
		},
		formvalue: function(sid) { return this.widgets[sid].value.trim(); },
		write: function(sid) {
			var v = this.formvalue(sid), old = uci.get(this.map.config, sid, this.option);
			if (v === '' && this.rmempty) { if (old != null) uci.unset(this.map.config, sid, this.option); }
			else if (v !== (old == null ? '' : String(old))) uci.set(this.map.config, sid, this.option, v);
		}
	});
	var Value = AbstractValue.extend({
		renderWidget: function(sid) {
			var v = this.cfgvalue(sid);
			var input = E('input', { 'type': this.password ? 'password' : 'text', 'class': 'cbi-input-text',
				'name': this.option, 'placeholder': this.placeholder || '' });
			input.value = v == null ? '' : v;
			this.widgets[sid] = input;
			return E('div', {}, [input, E('div', { 'class': 'cbi-value-error' })]);
		}
	});
	var Flag = AbstractValue.extend({
		__init__: function() { AbstractValue.prototype.__init__.apply(this, arguments); this.enabled = '1'; this.disabled = '0'; },
		renderWidget: function(sid) {
			var input = E('input', { 'type': 'checkbox', 'name': this.option });
			input.checked = String(this.cfgvalue(sid)) == this.enabled;
			this.widgets[sid] = input;
			return E('div', {}, [input]);
		},
		inputs: function() { return []; },
		formvalue: function(sid) { return this.widgets[sid].checked ? this.enabled : this.disabled; },
		write: function(sid) {
			var v = this.formvalue(sid), old = uci.get(this.map.config, sid, this.option);
			var shown = old == null ? String(this.default) : String(old);
			if (v !== shown || (old == null && !this.rmempty)) uci.set(this.map.config, sid, this.option, v);
		}
	});
	var ListValue = AbstractValue.extend({
		value: function(k, label) { (this.choices = this.choices || []).push([k, label || k]); },
		renderWidget: function(sid) {
			var cur = this.cfgvalue(sid);
			var sel = E('select', { 'name': this.option, 'class': 'cbi-input-select' },
				this.choices.map(function(c) { return E('option', { 'value': c[0] }, [c[1]]); }));
			sel.value = cur;
			this.widgets[sid] = sel;
			return E('div', {}, [sel]);
		},
		inputs: function() { return []; },
		write: function(sid) {
			var v = this.formvalue(sid), old = uci.get(this.map.config, sid, this.option);
			if (v !== (old == null ? String(this.default) : String(old))) uci.set(this.map.config, sid, this.option, v);
		}
	});
	var DynamicList = AbstractValue.extend({
		renderWidget: function(sid) {
			var self = this, v = this.cfgvalue(sid);
			var items = v == null ? [] : (Array.isArray(v) ? v : [v]);
			var box = E('div', { 'class': 'cbi-dynlist', 'data-name': this.option });
			this.widgets[sid] = box;
			var addItem = function(val) {
				var input = E('input', { 'type': 'text', 'class': 'cbi-input-text', 'value': val });
				input.value = val;
				var item = E('div', { 'class': 'item' }, [input,
					E('button', { 'class': 'cbi-button cbi-button-remove', 'click': function(ev) { ev.preventDefault(); box.removeChild(item); } }, ['×']),
					E('div', { 'class': 'cbi-value-error' })]);
				box.insertBefore(item, adder);
				return input;
			};
			var newInput = E('input', { 'type': 'text', 'class': 'cbi-input-text add-item', 'placeholder': _('add…') });
			var adder = E('div', { 'class': 'add' }, [newInput, E('button', { 'class': 'cbi-button cbi-button-add', 'click': function(ev) {
				ev.preventDefault();
				if (newInput.value.trim()) { var i = addItem(newInput.value.trim()); newInput.value = ''; self.check(sid); i.focus(); }
			} }, ['+'])]);
			box.appendChild(adder);
			items.forEach(addItem);
			return box;
		},
		inputs: function(sid) { return Array.prototype.slice.call(this.widgets[sid].querySelectorAll('.item input')); },
		formvalue: function(sid) { return this.inputs(sid).map(function(i) { return i.value.trim(); }).filter(Boolean); },
		write: function(sid) {
			var v = this.formvalue(sid), old = uci.get(this.map.config, sid, this.option);
			old = old == null ? [] : (Array.isArray(old) ? old : [old]);
			if (JSON.stringify(v) === JSON.stringify(old)) return;
			if (v.length) uci.set(this.map.config, sid, this.option, v);
			else uci.unset(this.map.config, sid, this.option);
		}
	});
	var TypedSection = Base.extend({
		__init__: function(map, type, title) { this.map = map; this.sectiontype = type; this.title = title; this.children = []; },
		option: function(cls, name, title, desc) { var o = new cls(this.map, this, name, title, desc); this.children.push(o); return o; },
		cfgsections: function() { return uci.sections(this.map.config, this.sectiontype).map(function(s) { return s['.name']; }); },
		render: function() {
			var self = this;
			return E('div', { 'class': 'cbi-section' }, [E('h3', {}, [this.title])].concat(this.cfgsections().map(function(sid) {
				return E('div', { 'class': 'cbi-section-node', 'data-section-id': sid }, self.children.map(function(o) { return o.renderRow(sid); }));
			})));
		}
	});
	var Map = Base.extend({
		__init__: function(config, title, description) { this.config = config; this.title = title; this.description = description; this.sections = []; },
		section: function(cls, type, title) { var s = new cls(this, type, title); this.sections.push(s); return s; },
		render: function() {
			var self = this;
			return uci.load(this.config).then(function() {
				var el = E('div', { 'class': 'cbi-map', 'id': 'cbi-' + self.config }, [
					E('h2', {}, [self.title]), E('div', { 'class': 'cbi-map-descr' }, [self.description])
				].concat(self.sections.map(function(s) { return s.render(); })));
				el.__map = self;
				return el;
			});
		},
		save: function() {
			var self = this, errors = [];
			this.sections.forEach(function(s) { s.cfgsections().forEach(function(sid) {
				s.children.forEach(function(o) { var e = o.check(sid); if (e) errors.push(o.option + ': ' + e); });
			}); });
			if (errors.length) {
				ui.addNotification(null, E('p', {}, [_('Some fields are invalid, cannot save values!'), E('br'), errors.join('; ')]), 'danger');
				return Promise.reject(new Error('invalid: ' + errors.join('; ')));
			}
			this.sections.forEach(function(s) { s.cfgsections().forEach(function(sid) {
				s.children.forEach(function(o) { o.write(sid); });
			}); });
			return uci.save().then(function(r) {
				ui.addNotification(null, E('p', {}, [_('Configuration saved')]), 'info');
				return r;
			});
		}
	});
	var form = { Map: Map, TypedSection: TypedSection, Value: Value, Flag: Flag, ListValue: ListValue, DynamicList: DynamicList };

	var L = {
		bind: function(fn, self) { return fn.bind(self); },
		resolveDefault: function(p, def) { return Promise.resolve(p).catch(function() { return def; }); },
		env: {}
	};
	window.L = L; window.E = E; window._ = _;

	// ---- the 'require' loader, as LuCI's: header lines name modules, the body returns a class.
	var modules = { view: view, form: form, uci: uci, rpc: rpc, poll: poll, dom: dom, ui: ui, baseclass: Base };
	window.loadView = function(path) {
		return fetch('/luci-static/resources/view/' + path + '.js').then(function(r) { return r.text(); }).then(function(src) {
			var names = [], args = [], re = /^\s*'require\s+([\w.]+)(?:\s+as\s+(\w+))?';/gm, m;
			while ((m = re.exec(src))) {
				var mod = m[1] == 'uqr' ? window.UQR : modules[m[1]];
				if (!mod) throw new Error('the stand-in has no module ' + m[1]);
				names.push(m[2] || m[1].split('.').pop());
				args.push(mod);
			}
			var C = Function.apply(null, names.concat([src + '\n//# sourceURL=' + path + '.js'])).apply(null, args);
			var v = new C();
			var root = document.getElementById('maincontent');
			return Promise.resolve(v.load()).then(function(data) { return v.render(data); }).then(function(node) {
				root.appendChild(node);
				if (v.handleSave) {
					root.appendChild(E('div', { 'class': 'cbi-page-actions' }, [
						E('button', { 'class': 'cbi-button cbi-button-save', 'id': 'save', 'click': function() {
							v.handleSave().then(function() { window.__saved = 'ok'; }, function(e) { window.__saved = String(e.message || e); });
						} }, [_('Save')])
					]));
				}
				window.__view = v;
				document.body.setAttribute('data-loaded', path);
			});
		}).catch(function(e) {
			document.body.setAttribute('data-error', String(e && e.stack || e));
			throw e;
		});
	};
})();
