#!/bin/bash
# layering_opts.sh - each command option is said once in the C sources
# (cmd/cmd.h): declared in one struct cmd_opt array per command, from which
# cmd/opt.c builds getopt_long's table and --help.  It fails when
#   - a long name is declared twice in one cmd/*.c file (two entries "json"),
#   - a getopt `struct option` table appears in cmd/ outside cmd/opt.c,
#   - a hand-written help line ("  --name ...") appears in a C string in cmd/.
# The checker is run once on the real cmd/ and, so that it can be seen to fail,
# on copies with each of the three mistakes planted.
. tests/lib.sh

# check_opts DIR: prints one line per problem; status 1 when there is one
check_opts() {
	local dir=$1 bad
	bad=$(
		# 1. names declared inside struct cmd_opt arrays, per file
		awk '/struct cmd_opt [a-z_0-9]*\[\] = \{/ { on = 1; next }
		     on && /^};/ { on = 0 }
		     on && match($0, /^[ \t]*\{ "[^"]+",/) {
			s = substr($0, RSTART, RLENGTH); sub(/^[ \t]*\{ "/, "", s); sub(/",$/, "", s)
			n[FILENAME " " s]++
		     }
		     END { for (k in n) if (n[k] > 1) print "declared " n[k] " times: " k }' "$dir"/*.c
		# 2. getopt tables outside the shared builder
		grep -n 'struct option' "$dir"/*.c | grep -v "^$dir/opt\.c:" | sed 's/^/getopt table: /'
		# 3. help lines written by hand
		grep -nE '"  -{1,2}[a-zA-Z]' "$dir"/*.c | sed 's/^/hand-written help: /'
	)
	[ -z "$bad" ] && return 0
	printf '%s\n' "$bad"
	return 1
}

t_case opts_declared_once_in_cmd
out=$(check_opts cmd) || t_fail "$out"

t_case opts_every_command_file_has_an_entry
for f in cmd/*.c; do
	n=$(basename "$f" .c)
	case $n in lora|opt) continue ;; esac
	grep -q "^const struct cmd_def cmd_${n}_entry = {" "$f" || t_fail "$f defines no cmd_${n}_entry"
	grep -q "COMMAND($n)" cmd/lora.c || t_fail "cmd/lora.c does not list COMMAND($n)"
done

# The checker can fail: plant each mistake once in a copy of cmd/.
t_case opts_checker_catches_a_duplicate_name
cp -r cmd "$T/dup"
sed -i '0,/^\t{ "json",/s//\t{ "json", 0, NULL, NULL, 0, 0, 0 },\n&/' "$T/dup/list.c"
out=$(check_opts "$T/dup") && t_fail "a second \"json\" in list.c was not caught"
case $out in *"declared 2 times: $T/dup/list.c json"*) ;; *) t_fail "unexpected report: $out" ;; esac

t_case opts_checker_catches_a_getopt_table
cp -r cmd "$T/tbl"
printf 'static const struct option x[] = { { "json", 0, NULL, 1 }, { 0 } };\n' >>"$T/tbl/verify.c"
check_opts "$T/tbl" >/dev/null && t_fail "a struct option table in verify.c was not caught"

t_case opts_checker_catches_a_help_line
cp -r cmd "$T/help"
printf 'static const char *h = "  --json        one JSON document";\n' >>"$T/help/rm.c"
check_opts "$T/help" >/dev/null && t_fail "a hand-written help line in rm.c was not caught"
t_end
