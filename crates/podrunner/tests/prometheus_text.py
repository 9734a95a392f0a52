"""Parses a Prometheus text exposition (format 0.0.4) from stdin with the official Python
client's parser and prints it as JSON: {"types": {family: [type, ...]}, "samples": [[sample
name, labels, value], ...]}. The parser names a counter's family without `_total`, so
gitlab-runner's gauge gitlab_runner_jobs and counter gitlab_runner_jobs_total share a family
name there: types are lists. A malformed exposition raises, exit 1.
"""

import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    types = {}
    samples = []
    for family in text_string_to_metric_families(sys.stdin.read()):
        types.setdefault(family.name, []).append(family.type)
        for s in family.samples:
            samples.append([s.name, s.labels, None if math.isinf(s.value) else s.value])
    print(json.dumps({"types": types, "samples": samples}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
