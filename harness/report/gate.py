"""Renderings of a gate's report (`harness.validate/1`): the terminal table, JUnit XML for CI systems and a
Markdown summary for a pull-request comment."""
from __future__ import annotations

import re


def gate_table(report: dict, config):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"gate {config}: {'passed' if report['passed'] else 'FAILED'}"), title_justify="left")
    for column in ("profile", "threshold", "limit", "value", "result", "detail"):
        table.add_column(column)
    for check in report["checks"]:
        value = "-" if check["value"] is None else f"{check['value']:.4g}"
        table.add_row(escape(check["profile"]), check["threshold"], f"{check['limit']:.4g}", value,
                      "[green]pass[/]" if check["passed"] else "[bold red]FAIL[/]", escape(check["message"]))
    return table


_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value) -> str:
    """Text XML 1.0 can hold: control characters (a profile name may carry one) are dropped, never left to
    make the file ill-formed; ElementTree escapes the rest."""
    return _NOT_XML.sub("", str(value))


def junit_xml(report: dict) -> str:
    """One <testsuite> per profile, one <testcase> per threshold (JUnit XML as GitLab/GitHub/Jenkins read it)."""
    from xml.etree import ElementTree as ET

    model = xml_text(report["model"]["name"])
    suites = ET.Element("testsuites", name=f"harness validate {model}",
                        tests=str(len(report["checks"])), failures=str(sum(not c["passed"] for c in report["checks"])))
    by_profile: dict[str, list] = {}
    for check in report["checks"]:
        by_profile.setdefault(check["profile"], []).append(check)
    for profile, checks in by_profile.items():
        suite = ET.SubElement(suites, "testsuite", name=xml_text(profile), tests=str(len(checks)),
                              failures=str(sum(not c["passed"] for c in checks)), errors="0", skipped="0", time="0")
        for check in checks:
            case = ET.SubElement(suite, "testcase", name=xml_text(check["threshold"]),
                                 classname=xml_text(f"harness.gate.{model}.{profile}"), time="0")
            if not check["passed"]:
                failure = ET.SubElement(case, "failure", message=xml_text(check["message"]), type="threshold")
                failure.text = xml_text(f"{check['threshold']} = {check['limit']}: {check['message']}")
            else:
                ET.SubElement(case, "system-out").text = xml_text(check["message"])
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def markdown_summary(report: dict) -> str:
    verdict = "passed" if report["passed"] else "FAILED"
    lines = [f"### harness gate {verdict}: {report['model']['name']} on {report['dataset']['name']} "
             f"({report['dataset']['samples']} samples)", "",
             "| profile | threshold | limit | value | result |", "|---|---|---|---|---|"]
    for check in report["checks"]:
        value = "-" if check["value"] is None else f"{check['value']:.4g}"
        lines.append(f"| {check['profile']} | `{check['threshold']}` | {check['limit']:.4g} | {value} | "
                     f"{'✅ pass' if check['passed'] else '❌ **fail**'} |")
    failed = [c for c in report["checks"] if not c["passed"]]
    if failed:
        lines += ["", "Failed:"] + [f"- {c['profile']} `{c['threshold']}`: {c['message']}" for c in failed]
    return "\n".join(lines) + "\n"
