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
procd_send_signal() { _standin_record procd_send_signal "$@"; }
logger() { _standin_record logger "$@"; }

# procd_running SERVICE: whether procd runs an instance of it; "$STANDIN_RUNNING" (default 1).
procd_running() {
	_standin_record procd_running "$@"
	[ "${STANDIN_RUNNING:-1}" = 1 ]
}

# config_load reads the file once (through the uci stand-in), as OpenWrt's reads it through
# libuci; config_get and config_foreach read that copy, config_set changes it.
_STANDIN_CONFIG=
_STANDIN_CACHE=
config_load() {
	_STANDIN_CONFIG="$1"
	_STANDIN_CACHE="$(uci -q show "$1")"
}

# config_get VAR SECTION OPTION [DEFAULT]: a list's values come space-separated.
config_get() {
	_v="$(printf '%s\n' "$_STANDIN_CACHE" | sed -n "s/^$_STANDIN_CONFIG\.$2\.$3='\(.*\)'\$/\1/p" | tr '\n' ' ')"
	_v="${_v% }"
	[ -n "$_v" ] || _v="$4"
	eval "$1=\"\$_v\""
}

# config_set SECTION OPTION VALUE
config_set() {
	_STANDIN_CACHE="$(printf '%s\n' "$_STANDIN_CACHE" | grep -v "^$_STANDIN_CONFIG\.$1\.$2=")
$_STANDIN_CONFIG.$1.$2='$3'"
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
	for _n in $(printf '%s\n' "$_STANDIN_CACHE" | sed -n "s/^$_STANDIN_CONFIG\.\([^.=]*\)=$2\$/\1/p"); do
		"$1" "$_n"
	done
}

# The package's file list: opkg's (24.10) or apk's (25.12, `$pkgname` set by the script).
_standin_list() {
	_pkg="${pkgname:-$(basename "${1%.*}")}"
	_list="$IPKG_INSTROOT/usr/lib/opkg/info/$_pkg.list"
	[ -f "$IPKG_INSTROOT/lib/apk/packages/$_pkg.list" ] && _list="$IPKG_INSTROOT/lib/apk/packages/$_pkg.list"
	echo "$_list"
}

# The package asks for no user or group (no Require-User): nothing to add.
add_group_and_user() { :; }

# OpenWrt's default_postinst: for each init script the package installed, `enable` it (into
# $IPKG_INSTROOT when building an image; on a live system also run uci-defaults and start).
default_postinst() {
	_list="$(_standin_list "$@")"
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
	_list="$(_standin_list "$@")"
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
