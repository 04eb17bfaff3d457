#!/bin/bash
# foundation_man.sh - every man page's SYNOPSIS equals what `lora CMD --help`
# prints (lora.1: what `lora --help` prints), and the pages render cleanly.
. tests/lib.sh

# The SYNOPSIS block of a roff page as plain text: the lines between .nf and
# .fi after ".SH SYNOPSIS", font escapes dropped, \- as -.
man_synopsis() {
	awk '/^\.SH /{ in_syn = ($2 == "SYNOPSIS") } in_syn && /^\.nf/{ on = 1; next }
	     in_syn && /^\.fi/{ exit } on { print }' "$1" |
		sed -e 's/\\f[BIRP]//g' -e 's/\\-/-/g' -e 's/\\e/\\/g' -e "s/\\\\(aq/'/g" -e 's/\\&//g'
}

# The usage lines of --help output: up to the first blank line, "usage: " and
# the matching indentation removed.
help_synopsis() {
	awk 'NF == 0 { exit } { sub(/^usage: /, ""); sub(/^       /, ""); print }'
}

pages=0
for page in man/lora.1 man/lora-*.1; do
	[ -f "$page" ] || continue
	pages=$((pages + 1))
	name=$(basename "$page" .1)
	cmd=${name#lora-}
	t_case "man_synopsis_matches_help_$cmd"
	if [ "$name" = lora ]; then
		run "$LORA" --help
	else
		run "$LORA" "$cmd" --help
	fi
	if [ "$RC" != 0 ]; then
		# a page for a command this binary does not have: nothing to compare
		case "$ERR" in *"not a lora command"*) echo "  (lora $cmd is not built in; skipped)"; _case="";
			continue ;; esac
	fi
	expect_rc 0
	want=$(man_synopsis "$page")
	got=$(printf '%s\n' "$OUT" | help_synopsis)
	[ -n "$want" ] || t_fail "$page has no SYNOPSIS .nf block"
	[ "$want" = "$got" ] || t_fail "$page SYNOPSIS differs from --help:
--- man
$want
--- help
$got"
	if [ "$name" != lora ]; then
		t_case "help_cmd_equals_dash_dash_help_$cmd"
		run "$LORA" help "$cmd"
		expect_rc 0
		help_out=$OUT
		run "$LORA" "$cmd" --help
		expect_eq "$help_out" "$OUT" "lora help $cmd vs lora $cmd --help"
	fi
	t_case "man_page_sections_$cmd"
	for s in NAME SYNOPSIS DESCRIPTION OPTIONS "EXIT STATUS" EXAMPLES "SEE ALSO"; do
		grep -q "^\.SH \"*$s\"*\$" "$page" || t_fail "$page lacks the $s section"
	done
	if command -v groff >/dev/null; then
		w=$(LC_ALL=C.UTF-8 groff -man -ww -z -Tutf8 "$page" 2>&1)
		[ -z "$w" ] || t_fail "groff warns about $page: $w"
	fi
done
t_case man_pages_exist
[ "$pages" -ge 2 ] || t_fail "expected man/lora.1 and man/lora-inspect.1, found $pages pages"
# Every page names a command lora has, or is lora.1 itself.
for page in man/lora-*.1; do
	cmd=$(basename "$page" .1); cmd=${cmd#lora-}
	grep -q "^\.B $cmd\$" man/lora.1 || t_fail "lora.1 does not list the command '$cmd'"
done
t_end
