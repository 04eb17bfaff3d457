#!/usr/bin/env python3
"""tok_data_order.py - the row order of data.h's documented shuffle, in Python.

Prints the orders that tests/unit/test_data_rows.c expects (pasted there), so
the C permutation is checked against this independent reading of the spec.
Run: python3 tests/oracle/tok_data_order.py  (loop_peft.py imports order() from here)
"""
M = (1 << 64) - 1


def splitmix64(s):
    s = (s + 0x9E3779B97F4A7C15) & M
    z = s
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return s, z ^ (z >> 31)


def order(n, seed, epoch):
    s = (seed ^ ((0x6A09E667F3BCC909 * (epoch + 1)) & M)) & M
    o = list(range(n))
    for i in range(n - 1, 0, -1):
        m = i + 1
        while True:
            s, r = splitmix64(s)
            if r < (1 << 64) - ((1 << 64) % m):
                break
        j = r % m
        o[i], o[j] = o[j], o[i]
    return o


if __name__ == "__main__":
    for n, seed, epoch in [(10, 42, 0), (10, 42, 1), (7, 0, 0), (10, 42, M)]:
        print(n, seed, epoch, order(n, seed, epoch))
