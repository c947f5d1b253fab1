#!/bin/sh
# third-party-licenses.sh BINARY: print the licence and notice files of
# everything linked into BINARY (a Go binary of this module): the Go
# standard library and each module `go version -m` lists, from the module
# cache (or the replacement directory). make dist puts the output in every
# release archive as THIRD_PARTY_LICENSES, as the Apache-2.0 (NOTICE) and
# BSD/MIT (copyright notice) licences of the dependencies require.
set -eu
GO=${GO:-go}
bin=${1:?usage: third-party-licenses.sh BINARY}

section() { # section TITLE DIR
	found=
	for f in "$2"/*; do
		case "$(basename "$f" | tr 'A-Z' 'a-z')" in
		licence* | license* | notice* | copying* | edl-v10* | epl-v20*)
			[ -f "$f" ] || continue
			printf '==== %s: %s ====\n\n' "$1" "$(basename "$f")"
			cat "$f"
			printf '\n'
			found=1
			;;
		esac
	done
	if [ -z "$found" ]; then
		echo "third-party-licenses.sh: no licence file for $1 in $2" >&2
		exit 1
	fi
}

echo "Umbra is licensed under the Apache License 2.0 (LICENSE). It links the"
echo "following software, whose licences and notices follow."
echo
section "Go standard library $("$GO" env GOVERSION)" "$("$GO" env GOROOT)"
"$GO" version -m "$bin" | awk '$1 == "dep" { print $2, $3 }' | while read -r path ver; do
	dir=$("$GO" list -m -f '{{if .Replace}}{{.Replace.Dir}}{{else}}{{.Dir}}{{end}}' "$path")
	if [ -z "$dir" ] || [ ! -d "$dir" ]; then
		echo "third-party-licenses.sh: module $path $ver is not in the module cache (go mod download)" >&2
		exit 1
	fi
	section "$path $ver" "$dir"
done
