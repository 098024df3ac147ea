'use strict';
'require tools.views as views';

// The daemon's lines of the system log, with LuCI's own log reader (luci-base's tools/views.js:
// ubus log.read on OpenWrt 25.12, `logread -e shadowmesh` on 24.10; the read ACL grants both).
return views.LogreadBox('shadowmesh', _('ShadowMesh'));
