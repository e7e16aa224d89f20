"""Python shared by the benchmark scripts in bench/: /metrics parsing, histogram quantiles, tables."""
import json
import math
import re
from collections import defaultdict

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(path):
    """[(name, {labels}, value)] of a Prometheus text exposition."""
    out = []
    with open(path) as f:
        for line in f:
            if not line or line[0] == '#':
                continue
            m = LINE.match(line)
            if not m:
                continue
            try:
                value = float(m.group(4))
            except ValueError:
                continue
            out.append((m.group(1), dict(LABEL.findall(m.group(3) or '')), value))
    return out


def total(samples, name, **want):
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == x for k, x in want.items()))


def delta(m0, m1, name, **want):
    return total(m1, name, **want) - total(m0, name, **want)


def buckets(samples, name, **want):
    """{le: cumulative count} summed over the matching series."""
    b = defaultdict(float)
    for n, l, v in samples:
        if n == name + '_bucket' and all(l.get(k) == x for k, x in want.items()):
            b[float(l['le'])] += v
    return b


def bucket_delta(m0, m1, name, **want):
    b0, b1 = buckets(m0, name, **want), buckets(m1, name, **want)
    return {le: b1[le] - b0.get(le, 0.0) for le in b1}


def quantile(q, cum):
    """histogram_quantile() over {le: cumulative count}, as Prometheus computes it."""
    les = sorted(cum)
    if not les or cum[les[-1]] <= 0:
        return None
    rank = q * cum[les[-1]]
    prev_le, prev_c = 0.0, 0.0
    for le in les:
        c = cum[le]
        if c >= rank:
            if math.isinf(le):
                return prev_le
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return les[-1]


def cpu(a, key='ticks'):
    """CPU seconds between the snapshots a[key + '0'] and a[key + '1'] ([utime, stime] ticks)."""
    return (sum(a[key + '1']) - sum(a[key + '0'])) / a['clk_tck']


def fmt(v, spec, none='-'):
    return none if v is None else format(v, spec)


def results(path):
    """(all rows, rows that did not fail) of a results.jsonl."""
    rows = [json.loads(l) for l in open(path) if l.strip()]
    return rows, [r for r in rows if 'failed' not in r]


def print_table(head, body, left=(1,)):
    """A plain-text table; columns in `left` are left-aligned, the others right-aligned."""
    widths = [max(len(x) for x in col) for col in zip(head, *body)]

    def line(cells):
        return '  '.join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print(line(head))
    print('  '.join('-' * w for w in widths))
    for b in body:
        print(line(b))


def print_failures_and_noise(all_rows, rows, limit=0.3):
    for r in all_rows:
        if 'failed' in r:
            print('FAILED: N=%d %s: %s' % (r['n'], r['prober'], r['failed']))
    noisy = ['N=%d %s (%.2f cores)' % (r['n'], r['prober'], r['other_load_cores'])
             for r in rows if r['other_load_cores'] > limit]
    if noisy:
        print('NOTE: other processes used CPU during: ' + ', '.join(noisy) + '; those figures are less reliable')
