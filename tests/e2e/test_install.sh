#!/bin/sh
# make install DESTDIR=<empty dir> PREFIX=/usr lays out the binaries, the
# systemd unit (paths substituted, Type=notify, hardened), sysusers.d, the
# man pages (which render without warnings), the example configuration
# (which the installed kmsd accepts) and the operations docs; and the
# documentation lists every configuration key kms_config.c knows.
set -eu
. tests/e2e/lib.sh
work="${CUSTOS_TEST_WORK:-/tmp}/install"
rm -rf "$work"
mkdir -p "$work/root"
fail=0
i=0
ok() { i=$((i + 1)); echo "ok $i - $1"; }
nok() { i=$((i + 1)); echo "not ok $i - $1"; fail=1; }
t() { d=$1; shift; if "$@"; then ok "$d"; else nok "$d"; fi; }

san=
case "$BUILD_DIR" in */asan) san=1 ;; */tsan) san=thread ;; esac
if make --no-print-directory -s install BUILD="$BUILD_DIR" SAN="$san" DESTDIR="$work/root" \
    PREFIX=/usr >"$work/make.out" 2>&1; then ok "make install DESTDIR=<empty dir> PREFIX=/usr"
else nok "make install failed"; cat "$work/make.out"; exit 1; fi
R="$work/root"
want="usr/sbin/kmsd usr/bin/kmsctl usr/lib/systemd/system/kmsd.service
usr/lib/sysusers.d/custos.conf usr/share/man/man8/kmsd.8 usr/share/man/man1/kmsctl.1
usr/share/man/man5/kmsd.json.5 usr/share/custos/examples/kmsd.json
usr/share/custos/examples/policy.json usr/share/doc/custos/operations.md
usr/share/doc/custos/configuration.md usr/share/custos/dev-hsm.sh
usr/share/custos/tls-hsm-key.py usr/share/doc/custos/openssl-provider.md"
# The OpenSSL provider goes into OpenSSL's own modules directory (under
# DESTDIR), wherever PREFIX points (docs/openssl-provider.md).
moddir=$(pkg-config --variable=modulesdir libcrypto)
want="$want ${moddir#/}/custos.so"
missing=
for f in $want; do [ -f "$R/$f" ] || missing="$missing $f"; done
t "every expected file is installed${missing:+ (missing:$missing)}" [ -z "$missing" ]
extra=$(cd "$R" && find . -type f | sed 's|^\./||' | sort | while read -r f; do
    case " $(echo $want) " in *" $f "*) ;; *) echo "$f" ;; esac; done)
t "nothing else is installed${extra:+ (extra: $extra)}" [ -z "$extra" ]
outside=$(cd "$R" && find . -mindepth 1 -maxdepth 1 ! -name usr)
t "everything lands under PREFIX" [ -z "$outside" ]
t "kmsd and kmsctl are executable, unit and man pages are 0644" sh -c \
    '[ -x "$1/usr/sbin/kmsd" ] && [ -x "$1/usr/bin/kmsctl" ] &&
     [ "$(stat -c %a "$1/usr/lib/systemd/system/kmsd.service")" = 644 ] &&
     [ "$(stat -c %a "$1/usr/share/man/man8/kmsd.8")" = 644 ]' - "$R"

unit="$R/usr/lib/systemd/system/kmsd.service"
t "the unit runs /usr/sbin/kmsd (PREFIX substituted)" sh -c \
    'grep -qx "ExecStart=/usr/sbin/kmsd --config /etc/custos/kmsd.json" "$1" && ! grep -q @SBINDIR@ "$1"' - "$unit"
for d in Type=notify WatchdogSec= NoNewPrivileges=yes ProtectSystem=strict PrivateTmp=yes \
    PrivateDevices=yes RestrictAddressFamilies= SystemCallFilter=@system-service \
    'CapabilityBoundingSet=$' StateDirectory=custos User=custos ExecReload=; do
    grep -q "^$d" "$unit" || missing_d="${missing_d:-} $d"
done
t "the unit is Type=notify and hardened${missing_d:+ (missing:$missing_d)}" [ -z "${missing_d:-}" ]
if command -v systemd-analyze >/dev/null 2>&1; then
    # Only the binary's absence (DESTDIR) and man: links may be reported.
    systemd-analyze verify "$unit" >"$work/verify.out" 2>&1 || true
    bad=$(grep -v -e 'is not executable' -e "Command 'man " "$work/verify.out" || true)
    t "systemd-analyze verify finds nothing wrong with the unit${bad:+: $bad}" [ -z "$bad" ]
fi

for m in man8/kmsd.8 man1/kmsctl.1 man5/kmsd.json.5; do
    w=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$R/usr/share/man/$m" 2>&1 >/dev/null || echo failed)
    t "$m renders without warnings${w:+: $w}" [ -z "$w" ]
done

# The example configuration is valid for the installed kmsd, given PIN
# files of the right mode in place of /etc/custos/pins.
ex="$work/example"
mkdir -p "$ex"
cp "$R/usr/share/custos/examples/kmsd.json" "$R/usr/share/custos/examples/policy.json" "$ex/"
(umask 077; openssl rand -hex 16 >"$ex/eu.pin"; openssl rand -hex 16 >"$ex/us.pin")
/usr/bin/python3 - "$ex" <<'PY'
import json, sys
d = sys.argv[1]
c = json.load(open(f"{d}/kmsd.json"))
c["policy"] = "policy.json"
for t, p in zip(c["pkcs11"]["tokens"], ("eu", "us")):
    t["pin"] = f"file:{p}.pin"
json.dump(c, open(f"{d}/check.json", "w"))
PY
t "the installed kmsd accepts the example configuration and policy (--check-config)" \
    "$R/usr/sbin/kmsd" --check-config --config "$ex/check.json"

# Every key the parser accepts is documented, in the man page and in
# docs/configuration.md.
keys=$(/usr/bin/python3 - <<'PY'
import re
src = open("kms/service/kms_config.c").read()
body = src[src.index("static kms_err parse("):]
out = set()
for m in re.finditer(r'static const char \*const (\w+)\[\] = \{(.*?)\};', body, re.S):
    names = re.findall(r'"([a-z_0-9]+)"', m.group(2))
    out.update(names)
print(" ".join(sorted(out)))
PY
)
undoc=
for k in $keys; do
    grep -Eq "^\.(B|BR) .*\b$k\b" docs/man/kmsd.json.5 || undoc="$undoc $k(man)"
    grep -q "\`[a-z0-9_.]*$k" docs/configuration.md || undoc="$undoc $k(md)"
done
t "every configuration key is documented ($(echo $keys | wc -w) keys)${undoc:+; undocumented:$undoc}" [ -z "$undoc" ]
exit $fail
