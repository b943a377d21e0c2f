"""Parse an OpenMetrics text exposition (stdin) with the Prometheus
project's own parser and print its samples as JSON: {name: [[labels,
value], ...]}. A text the parser refuses fails the test that runs this."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

samples = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.setdefault(s.name, []).append([s.labels, s.value])
print(json.dumps(samples))
