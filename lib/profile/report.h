// report.html: one self-contained page (inline CSS, SVG and JS; no network requests) rendered
// in the browser from the summary JSON it embeds, the same object dsk writes as summary.json.
//
// Checkable convention (tests/stages/test_profile.cpp): every number or word taken from the
// summary is an element with data-key="<path in the summary>" (dots between object keys and
// array indices, e.g. "phases.2.seconds", "verdict.bound"), data-scale="<factor>" for numbers
// (the text is value × factor, e.g. 100 for percentages, shown with 4 significant digits and a
// unit suffix), and no child elements. When rendering finished, <body> has data-rendered="ok".
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace dsk::profile {

std::string render_report_html(const nlohmann::ordered_json& summary);

}  // namespace dsk::profile
