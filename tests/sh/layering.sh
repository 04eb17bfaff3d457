#!/bin/bash
# layering.sh - the tree's arrows only go down, and nothing forms a cycle.
#
# Layers, bottom first:  kernels/  <  libadapter/  <  train/  <  cmd/
# Rooms in libadapter/:  base  <  format  <  algebra, store  <  merge
# A file may include its own room, and rooms or layers below it; rooms of the
# same rank (algebra, store) do not include each other.  Modules (a .c with
# its .h) must form no include cycle, inside a room too.  tests/ and bench/
# stand above everything and are not checked.
. tests/lib.sh

# rank PATH: "layer.rank room" of a source path, or nothing for others
rank() {
	case "$1" in
	kernels/*) echo "0 kernels";;
	libadapter/base/*) echo "10 base";;
	libadapter/format/*) echo "11 format";;
	libadapter/algebra/*) echo "12 algebra";;
	libadapter/store/*) echo "12 store";;
	libadapter/merge/*) echo "13 merge";;
	libadapter/*) echo "19 libadapter-loose";;
	train/*) echo "20 train";;
	cmd/*) echo "30 cmd";;
	esac
}

# edges ROOT: "from to" for every quoted include under ROOT's source folders
edges() {
	(cd "$1" && grep -HoE '^[[:space:]]*#[[:space:]]*include[[:space:]]+"[^"]+"' \
		$(find kernels libadapter train cmd -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \)) |
	 sed -E 's/^([^:]+):.*"([^"]+)"/\1 \2/')
}

# check ROOT: prints one line per violation; exit 1 when any
check() {
	local bad=0 from to rf rt
	while read -r from to; do
		rf=$(rank "$from"); rt=$(rank "$to")
		if [ -z "$rt" ]; then
			[ -e "$1/$to" ] || { echo "$from: include \"$to\" is not a path from the top of the tree"; bad=1; }
			continue
		fi
		[ "${rf#* }" = "${rt#* }" ] && continue
		case "$rf" in *libadapter-loose) echo "$from: sources in libadapter/ belong in a room"; bad=1; continue;; esac
		if [ "${rt%% *}" -ge "${rf%% *}" ]; then
			echo "$from: includes $to, which is not below it (${rf#* } -> ${rt#* })"; bad=1
		fi
	done < <(edges "$1")
	# Cycles between modules (foo.c and foo.h are one node).
	if ! edges "$1" | sed -E 's/\.(c|h|cu|cuh) / /; s/\.(c|h|cu|cuh)$//' | awk '$1 != $2' |
		tsort >/dev/null 2>"$T/.tsort"; then
		echo "include cycle: $(grep -v 'input contains a loop' "$T/.tsort" | sed 's/^tsort: //' | tr '\n' ' ')"
		bad=1
	fi
	return $bad
}

t_case the_tree_only_includes_downwards
run check .
expect_rc 0
[ -z "$OUT" ] || t_fail "$OUT"

# The checker itself must catch what it is for: plant an upward include, a
# lateral one and a cycle in copies of the tree.
plant() {
	rm -rf "$T/tree"; mkdir -p "$T/tree"
	cp -r kernels libadapter train cmd "$T/tree/"
	printf '%s\n' "$2" >> "$T/tree/$1"
}

t_case an_upward_include_is_caught
plant libadapter/base/err.h '#include "libadapter/merge/merge.h"'
run check "$T/tree"; expect_rc 1
expect_out "libadapter/base/err.h: includes libadapter/merge/merge.h"

t_case a_library_including_the_trainer_is_caught
plant libadapter/format/peft.c '#include "train/net.h"'
run check "$T/tree"; expect_rc 1
expect_out "not below it (format -> train)"

t_case a_lateral_include_is_caught
plant libadapter/store/store.c '#include "libadapter/algebra/diff.h"'
run check "$T/tree"; expect_rc 1
expect_out "(store -> algebra)"

t_case a_cycle_inside_a_room_is_caught
plant libadapter/base/err.h '#include "libadapter/base/fsutil.h"'
run check "$T/tree"; expect_rc 1
expect_out "include cycle"

t_end
