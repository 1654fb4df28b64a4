"""A strict parser of the Prometheus text exposition format (0.0.4), for the
tests: it raises ValueError on anything a Prometheus server would refuse or
that the format's rules forbid, rather than guessing.

parse(text) -> {family: {"type": t, "help": h, "samples": [(name, labels, value)]}}
"""
import math
import re

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def _value(s, where):
    if s in ("+Inf", "Inf"):
        return math.inf
    if s == "-Inf":
        return -math.inf
    if s == "NaN":
        return math.nan
    if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", s):
        raise ValueError(f"{where}: bad value {s!r}")
    return float(s)


def _labels(s, where):
    """s: the text after '{'; returns (dict, rest after '}')."""
    labels, i = {}, 0
    while True:
        if s[i:i + 1] == "}":
            return labels, s[i + 1:]
        m = re.match(r"([a-zA-Z_][a-zA-Z0-9_]*)=\"", s[i:])
        if not m:
            raise ValueError(f"{where}: bad label at {s[i:]!r}")
        name = m.group(1)
        i += m.end()
        val = []
        while True:
            if i >= len(s):
                raise ValueError(f"{where}: unterminated label value")
            c = s[i]
            if c == "\\":
                nxt = s[i + 1:i + 2]
                if nxt not in ("\\", '"', "n"):
                    raise ValueError(f"{where}: bad escape \\{nxt}")
                val.append("\n" if nxt == "n" else nxt)
                i += 2
                continue
            if c == '"':
                i += 1
                break
            if c == "\n":
                raise ValueError(f"{where}: raw newline in label value")
            val.append(c)
            i += 1
        if name in labels:
            raise ValueError(f"{where}: label {name} twice")
        labels[name] = "".join(val)
        if s[i:i + 1] == ",":
            i += 1
        elif s[i:i + 1] != "}":
            raise ValueError(f"{where}: expected ',' or '}}' at {s[i:]!r}")


def _family_of(name, families):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if base in families and families[base]["type"] in ("histogram", "summary"):
                return base
    return name


def parse(text):
    if text and not text.endswith("\n"):
        raise ValueError("the exposition must end with a newline")
    families, seen_series, order, current = {}, set(), [], None
    for n, line in enumerate(text.split("\n")[:-1], 1):
        where = f"line {n}"
        if line == "":
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not NAME.match(name):
                    raise ValueError(f"{where}: bad metric name {name!r}")
                fam = families.setdefault(name, {"type": None, "help": None, "samples": []})
                if fam["samples"]:
                    raise ValueError(f"{where}: {parts[1]} of {name} after its samples")
                if parts[1] == "TYPE":
                    if fam["type"] is not None:
                        raise ValueError(f"{where}: second TYPE for {name}")
                    if len(parts) != 4 or parts[3] not in TYPES:
                        raise ValueError(f"{where}: bad TYPE line")
                    fam["type"] = parts[3]
                else:
                    if fam["help"] is not None:
                        raise ValueError(f"{where}: second HELP for {name}")
                    fam["help"] = parts[3] if len(parts) == 4 else ""
                if name in order and current != name:
                    raise ValueError(f"{where}: family {name} is not contiguous")
                if name not in order:
                    order.append(name)
                current = name
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(.*)\Z", line)
        if not m:
            raise ValueError(f"{where}: bad sample line {line!r}")
        name, rest = m.group(1), m.group(2)
        labels = {}
        if rest.startswith("{"):
            labels, rest = _labels(rest[1:], where)
        fields = rest.split(" ")
        if len(fields) not in (2, 3) or fields[0] != "":
            raise ValueError(f"{where}: bad sample line {line!r}")
        value = _value(fields[1], where)
        if len(fields) == 3 and not re.fullmatch(r"-?\d+", fields[2]):
            raise ValueError(f"{where}: bad timestamp")
        fam_name = _family_of(name, families)
        fam = families.setdefault(fam_name, {"type": None, "help": None, "samples": []})
        if fam_name in order and current != fam_name:
            raise ValueError(f"{where}: family {fam_name} is not contiguous")
        if fam_name not in order:
            order.append(fam_name)
        current = fam_name
        ftype = fam["type"] or "untyped"
        if ftype == "histogram":
            if name == fam_name:
                raise ValueError(f"{where}: histogram sample without _bucket/_sum/_count")
            if name.endswith("_bucket") and "le" not in labels:
                raise ValueError(f"{where}: bucket without le")
        if ftype in ("counter",) and value < 0:
            raise ValueError(f"{where}: negative counter")
        key = (name, tuple(sorted(labels.items())))
        if key in seen_series:
            raise ValueError(f"{where}: duplicate series {key}")
        seen_series.add(key)
        fam["samples"].append((name, labels, value))
    for fam_name, fam in families.items():
        if fam["type"] == "histogram":
            _check_histogram(fam_name, fam)
    return families


def _check_histogram(name, fam):
    groups = {}
    for sname, labels, value in fam["samples"]:
        base = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        g = groups.setdefault(base, {"buckets": [], "sum": None, "count": None})
        if sname == name + "_bucket":
            g["buckets"].append((_value(labels["le"], name), value))
        elif sname == name + "_sum":
            g["sum"] = value
        elif sname == name + "_count":
            g["count"] = value
    for base, g in groups.items():
        b = g["buckets"]
        if not b or b[-1][0] != math.inf:
            raise ValueError(f"{name}{base}: no +Inf bucket last")
        if any(b[i][0] >= b[i + 1][0] for i in range(len(b) - 1)):
            raise ValueError(f"{name}{base}: bucket bounds not increasing")
        if any(b[i][1] > b[i + 1][1] for i in range(len(b) - 1)):
            raise ValueError(f"{name}{base}: buckets not cumulative")
        if g["count"] is None or g["sum"] is None:
            raise ValueError(f"{name}{base}: _count or _sum missing")
        if g["count"] != b[-1][1]:
            raise ValueError(f"{name}{base}: _count differs from the +Inf bucket")


def value(families, family, sample=None, **labels):
    """The value of the one sample of `family` (sample name defaults to the
    family's) whose labels include `labels`; 0 when there is none."""
    sample = sample or family
    hits = [v for n, l, v in families.get(family, {"samples": []})["samples"]
            if n == sample and all(l.get(k) == v2 for k, v2 in labels.items())]
    if len(hits) > 1:
        raise ValueError(f"{sample} {labels}: {len(hits)} samples match")
    return hits[0] if hits else 0.0
