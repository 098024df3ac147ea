# shellcheck shell=sh
# STAND-IN for the parts of OpenWrt's /lib/functions.sh, /lib/functions/procd.sh and
# /usr/share/libubox/jshn.sh that the package's scripts use (none of them is in a registry this
# project can reach). Every procd_*, json_* and logger call is appended to "$STANDIN_LOG", one
# line each with its arguments quoted, so a test can compare what start_service asked procd
# for. config_* read the UCI file through the `uci` stand-in, as OpenWrt's read it through
# libuci. default_postinst/default_prerm do what OpenWrt's do for a package's init scripts.

: "${STANDIN_LOG:=/dev/null}"

_standin_record() {
	_line=
	for _a in "$@"; do
		_line="$_line '$_a'"
	done
	echo "${_line# }" >>"$STANDIN_LOG"
}

procd_open_instance() { _standin_record procd_open_instance "$@"; }
procd_close_instance() { _standin_record procd_close_instance "$@"; }
procd_set_param() { _standin_record procd_set_param "$@"; }
procd_append_param() { _standin_record procd_append_param "$@"; }
procd_open_data() { _standin_record procd_open_data "$@"; }
procd_close_data() { _standin_record procd_close_data "$@"; }
procd_add_reload_trigger() { _standin_record procd_add_reload_trigger "$@"; }
procd_add_interface_trigger() { _standin_record procd_add_interface_trigger "$@"; }
json_add_array() { _standin_record json_add_array "$@"; }
json_close_array() { _standin_record json_close_array "$@"; }
json_add_object() { _standin_record json_add_object "$@"; }
json_close_object() { _standin_record json_close_object "$@"; }
json_add_string() { _standin_record json_add_string "$@"; }
logger() { _standin_record logger "$@"; }

_STANDIN_CONFIG=
config_load() { _STANDIN_CONFIG="$1"; }

# config_get VAR SECTION OPTION [DEFAULT]
config_get() {
	_v="$(uci -q get "$_STANDIN_CONFIG.$2.$3")" || _v="$4"
	eval "$1=\"\$_v\""
}

# config_get_bool VAR SECTION OPTION [DEFAULT]: 1/on/true/yes/enabled -> 1, else 0
config_get_bool() {
	config_get _b "$2" "$3" "$4"
	case "$_b" in
	1 | on | true | yes | enabled) _b=1 ;;
	*) _b=0 ;;
	esac
	eval "$1=\$_b"
}

# config_foreach FUNCTION TYPE: FUNCTION is called with each section name of that type
config_foreach() {
	_i=0
	while _t="$(uci -q get "$_STANDIN_CONFIG.@$2[$_i]")"; do
		[ "$_t" = "$2" ] || break
		for _n in $(uci -q show "$_STANDIN_CONFIG" | sed -n "s/^$_STANDIN_CONFIG\.\([^.=]*\)=$2\$/\1/p" | sed -n "$((_i + 1))p"); do
			"$1" "$_n"
		done
		_i=$((_i + 1))
	done
}

# OpenWrt's default_postinst: for each init script the package installed, `enable` it (into
# $IPKG_INSTROOT when building an image; on a live system also run uci-defaults and start).
default_postinst() {
	_pkg="$(basename "${1%.*}")"
	_list="$IPKG_INSTROOT/usr/lib/opkg/info/$_pkg.list"
	[ -f "$_list" ] || return 0
	export IPKG_INSTROOT
	grep -s '^/etc/init.d/' "$_list" | while read -r _i; do
		if [ -n "$IPKG_INSTROOT" ]; then
			sh "$IPKG_INSTROOT/etc/rc.common" "$IPKG_INSTROOT$_i" enable
		else
			"$_i" enable
			"$_i" start
		fi
	done
	return 0
}

default_prerm() {
	_pkg="$(basename "${1%.*}")"
	_list="$IPKG_INSTROOT/usr/lib/opkg/info/$_pkg.list"
	[ -f "$_list" ] || return 0
	export IPKG_INSTROOT
	grep -s '^/etc/init.d/' "$_list" | while read -r _i; do
		if [ -n "$IPKG_INSTROOT" ]; then
			sh "$IPKG_INSTROOT/etc/rc.common" "$IPKG_INSTROOT$_i" disable
		else
			"$_i" stop
			"$_i" disable
		fi
	done
	return 0
}
