"""Renders or lints podrunner's chart with helm-python-sdk (Helm's Go SDK, no helm binary).

    helm.py render CHART VALUES NAMESPACE   -> JSON {template path: manifest}
    helm.py lint CHART VALUES NAMESPACE     -> JSON lint report

VALUES is a YAML file, or "-" for the chart's defaults. Errors go to stderr, exit 1.
"""

import json
import sys

import helm_python as helm


def main() -> int:
    mode, chart_path, values_path, namespace = sys.argv[1:5]
    values = {}
    if values_path != "-":
        with open(values_path, encoding="utf-8") as handle:
            values = helm.values_from_yaml(handle.read()) or {}
    try:
        if mode == "render":
            chart = helm.Chart.load(chart_path)
            chart.validate_schema(values)
            rendered = chart.render(values, name="ci-runner", namespace=namespace, is_install=True)
            print(json.dumps(rendered))
        elif mode == "lint":
            print(json.dumps(helm.lint(chart_path, values, strict=True, namespace=namespace)))
        else:
            print(f"unknown mode {mode}", file=sys.stderr)
            return 2
    except helm.HelmError as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
