"""Python shared by the benchmark scripts in bench/: /metrics parsing, histogram quantiles, tables."""
import json
import math
import re
import struct
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


# ---------------------------------------------------------------------------------------------
# The Prometheus protobuf exposition (length-delimited io.prometheus.client.MetricFamily
# messages), read with a small hand-written protobuf reader: enough of metrics.proto for
# counters, gauges and histograms, classic and native buckets. Field numbers are those of
# prometheus-client 0.26's src/encoding/proto/metrics.proto (the same as client_model's).

def _varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _zigzag(n):
    return (n >> 1) ^ -(n & 1)


def _fields(buf):
    """(field number, wire type, value) of each field of one message: an int for a varint,
    bytes for a length-delimited field and for fixed 64- and 32-bit fields."""
    i, end = 0, len(buf)
    while i < end:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError('protobuf wire type %d (groups) not supported' % wire)
        yield number, wire, value


def _double(b):
    return struct.unpack('<d', b)[0]


def _repeated_varints(wire, value):
    """A repeated varint field: packed (one length-delimited field) or not (one varint each)."""
    if wire == 0:
        return [value]
    out, i = [], 0
    while i < len(value):
        v, i = _varint(value, i)
        out.append(v)
    return out


def _histogram(buf):
    h = dict(count=0, sum=0.0, buckets={}, schema=None, zero_threshold=0.0, zero_count=0,
             spans=[], deltas=[])
    for number, wire, value in _fields(buf):
        if number == 1:
            h['count'] = value
        elif number == 4 and _double(value) > 0:
            raise ValueError('float histograms (sample_count_float) not supported')
        elif number == 2:
            h['sum'] = _double(value)
        elif number == 3:
            b = dict((n, v) for n, _, v in _fields(value))
            h['buckets'][_double(b[2]) if 2 in b else 0.0] = b.get(1, 0)
        elif number == 5:
            h['schema'] = _zigzag(value)
        elif number == 6:
            h['zero_threshold'] = _double(value)
        elif number == 7:
            h['zero_count'] = value
        elif number == 12:
            s = dict((n, v) for n, _, v in _fields(value))
            h['spans'].append((_zigzag(s.get(1, 0)), s.get(2, 0)))
        elif number == 13:
            h['deltas'].extend(_zigzag(v) for v in _repeated_varints(wire, value))
        elif number in (8, 14):
            raise ValueError('float native buckets not supported')
        # negative buckets (9-11), exemplars and timestamps are ignored
    # Native buckets: {index: count}. The first span's offset is the first index, each other
    # span's the gap after the previous one; the deltas run on across spans, the first one
    # from zero.
    positive, index, count, k = {}, 0, 0, 0
    for offset, length in h.pop("spans"):
        index += offset
        for _ in range(length):
            count += h['deltas'][k]
            k += 1
            positive[index] = count
            index += 1
    if k != len(h['deltas']):
        raise ValueError('native histogram: %d deltas for %d span buckets' % (len(h['deltas']), k))
    del h['deltas']
    h['positive'] = positive
    return h


def parse_protobuf(path):
    """[(family name, {labels}, metric)] of a protobuf exposition; metric is a float (counter,
    gauge, untyped) or a dict (histogram: count, sum, buckets {le: cumulative}, schema,
    zero_threshold, zero_count, positive {native index: count})."""
    data = open(path, 'rb').read()
    out, i = [], 0
    while i < len(data):
        n, i = _varint(data, i)
        family, i = data[i:i + n], i + n
        name = None
        for number, _, value in _fields(family):
            if number == 1:
                name = value.decode()
            elif number == 4:
                labels, metric = {}, None
                for m, _, v in _fields(value):
                    if m == 1:
                        pair = dict((k, x) for k, _, x in _fields(v))
                        labels[pair.get(1, b'').decode()] = pair.get(2, b'').decode()
                    elif m in (2, 3, 5):
                        f = dict((k, x) for k, _, x in _fields(v))
                        metric = _double(f[1]) if 1 in f else 0.0
                    elif m == 7:
                        metric = _histogram(v)
                out.append((name, labels, metric))
    return out


def native_upper(index, schema):
    """Upper bound of native bucket `index` at `schema`: 2^(index * 2^-schema)."""
    return 2.0 ** (index * 2.0 ** -schema)


def _downscale(positive, by):
    """Native buckets at a schema `by` lower: bucket i goes to ceil(i / 2^by)."""
    if by == 0:
        return dict(positive)
    out = defaultdict(int)
    for i, c in positive.items():
        out[((i - 1) >> by) + 1] += c
    return dict(out)


def native_histograms(samples, name, **want):
    return [h for n, l, h in samples
            if n == name and isinstance(h, dict) and all(l.get(k) == x for k, x in want.items())]


def native_delta(p0, p1, name, **want):
    """The native buckets of `name` between two protobuf snapshots, summed over the matching
    series at the lowest schema any of them uses: dict(schema, zero_threshold, zero_count,
    positive {index: count}, count, classic {le: cumulative})."""
    h0, h1 = native_histograms(p0, name, **want), native_histograms(p1, name, **want)
    if not h1:
        return None
    schema = min(h['schema'] for h in h0 + h1)
    thresholds = set(h['zero_threshold'] for h in h0 + h1)
    if len(thresholds) != 1:
        raise ValueError('native histogram %s: zero thresholds differ: %s' % (name, sorted(thresholds)))
    out = dict(schema=schema, zero_threshold=thresholds.pop(), zero_count=0, count=0,
               positive=defaultdict(int), classic=defaultdict(float))
    for sign, hs in ((-1, h0), (1, h1)):
        for h in hs:
            out['zero_count'] += sign * h['zero_count']
            out['count'] += sign * h['count']
            for i, c in _downscale(h['positive'], h['schema'] - schema).items():
                out['positive'][i] += sign * c
            classic = dict(h['buckets'])
            classic.setdefault(math.inf, h['count'])  # the +Inf bucket is optional in protobuf
            if classic[math.inf] != h['count']:
                raise ValueError('histogram %s: +Inf bucket %d != count %d' % (name, classic[math.inf], h['count']))
            for le, c in classic.items():
                out['classic'][le] += sign * c
    out['positive'] = {i: c for i, c in sorted(out['positive'].items()) if c}
    if any(c < 0 for c in out['positive'].values()) or out['zero_count'] < 0:
        raise ValueError('native histogram %s went down between the snapshots (reset?)' % name)
    out['classic'] = dict(out['classic'])
    return out


def native_quantile(q, h):
    """A quantile of native buckets (a native_delta), interpolated exponentially inside the
    bucket it falls in (as Prometheus' histogram_quantile does for native histograms since
    2.50): in bucket (lo, hi] at fraction f of its count, lo * (hi / lo) ** f. In the zero
    bucket, linearly from 0 to the zero threshold. Negative buckets are ignored."""
    total = h['zero_count'] + sum(h['positive'].values())
    if total <= 0:
        return None
    rank = q * total
    if rank <= h['zero_count']:
        return h['zero_threshold'] * rank / h['zero_count']
    seen = h['zero_count']
    for i, c in sorted(h['positive'].items()):
        if seen + c >= rank:
            lo, hi = native_upper(i - 1, h['schema']), native_upper(i, h['schema'])
            lo = max(lo, h['zero_threshold'])
            return lo * (hi / lo) ** ((rank - seen) / c)
        seen += c
    return native_upper(max(h['positive']), h['schema'])


def native_check(h):
    """Problems (a list of strings, empty if none) found comparing native buckets with the
    classic buckets and count of the same data: the native total must equal the count, and at
    every classic bound le the classic cumulative count must lie between the native count of
    the buckets entirely at or below le and that of the buckets starting below le."""
    problems = []
    native_total = h['zero_count'] + sum(h['positive'].values())
    if native_total != h['count']:
        problems.append('native total %d != sample count %d' % (native_total, h['count']))
    for le, c in sorted(h['classic'].items()):
        if math.isinf(le):
            continue
        below = h['zero_count'] if h['zero_threshold'] <= le else 0
        reach = h['zero_count']
        for i, n in h['positive'].items():
            if native_upper(i, h['schema']) <= le:
                below += n
            if native_upper(i - 1, h['schema']) < le:
                reach += n
        if not below <= c <= reach:
            problems.append('classic le=%g: %d not within the native %d..%d' % (le, c, below, reach))
    return problems
