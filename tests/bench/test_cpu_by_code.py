"""bench/cpu_by_code.py reads `perf report -n`: samples count per shared object (or per
object and function), perf's comment lines do not, and each object lands in the group
of the code it holds."""

from __future__ import annotations

from bench.cpu_by_code import group, parse_report

REPORT = """\
# To display the perf.data header info, please use --header/--header-only options.
#
# Samples: 35K of event 'cpu-clock'
# Event count (approx.): 3527600000
#
# Overhead       Samples  Shared Object
# ........  ............  ..........................................
#
    52.12%         18011  libpython3.11.so.1.0
    27.00%          9330  [kernel.kallsyms]
     6.52%          2253  libc.so.6
     6.40%          2211  _message.abi3.so
     5.27%          1821  cpython.cpython-311-x86_64-linux-gnu.so
     1.30%           449  loop.cpython-311-x86_64-linux-gnu.so
     0.30%           104  _struct.cpython-311-x86_64-linux-gnu.so
     0.20%            69  [vdso]
     0.05%            17  etcd
"""

SYMBOLS = """\
# Overhead       Samples  Shared Object         Symbol
#
    21.60%          7466  libpython3.11.so.1.0  [.] _PyEval_EvalFrameDefault
     7.70%          2661  [kernel.kallsyms]     [k] finish_task_switch.isra.0
"""


def test_samples_per_object_and_comments_skipped() -> None:
    samples = parse_report(REPORT)
    assert samples["libpython3.11.so.1.0"] == 18011
    assert samples["[kernel.kallsyms]"] == 9330
    assert sum(samples.values()) == 34265
    assert not any(name.startswith(("#", ".")) for name in samples)


def test_objects_grouped_by_the_code_they_hold() -> None:
    groups = group(parse_report(REPORT))
    assert groups == {"CPython runtime": 18011, "kernel": 9330, "libc, libm, loader": 2253,
                      "protobuf (upb)": 2211, "py-lmdb + LMDB": 1821, "uvloop + libuv": 449,
                      "other extension modules": 104, "other": 69, "etcd (Go)": 17}


def test_functions_keep_their_object() -> None:
    rows = parse_report(SYMBOLS)
    assert rows["libpython3.11.so.1.0  [.] _PyEval_EvalFrameDefault"] == 7466
    assert len(rows) == 2
