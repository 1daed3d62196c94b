// `moe-eval report`: train-step metrics JSONL (one run per file) -> a markdown summary and PNG plots
// (gnuplot, run as a subprocess) of the key metrics against the optimizer step, runs overlaid.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moe::eval {

// The metrics the report summarises and plots, in order.
const std::vector<std::string>& report_metrics();

// One run's metrics as series of (step, value) points.
struct RunMetrics {
  std::string label;
  std::string path;
  uint64_t lines = 0, summary_lines = 0;  // JSON lines read; those with "kind": "summary"
  // Per key: points from the data lines (every line whose "kind" is not "summary": update lines, eval
  // lines, ...); keys that never occur in a data line take their points from the summary lines instead (moe-train-step writes the whole-step
  // mismatch/* and routing/* metrics there). Nested objects are flattened with '/'; null and non-numeric
  // values are skipped.
  std::map<std::string, std::vector<std::pair<double, double>>> series;
};

// Reads one metrics JSONL file. Throws moe::Error "file:line: ..." for malformed JSON, a line that is not
// an object, or a line without a numeric "step".
RunMetrics read_metrics(const std::string& path, const std::string& label);

// Run labels for files: `labels` when given (one per file), else file name stems, else (stems collide)
// paths without their extension. Throws moe::UsageError on a count mismatch or duplicate labels.
std::vector<std::string> run_labels(const std::vector<std::string>& paths, const std::vector<std::string>& labels);

struct ReportRun {
  std::vector<std::string> files;
  std::vector<std::string> labels;  // optional, one per file
  std::vector<std::string> extra_metrics;  // keys summarised and plotted after report_metrics()
  std::string out_dir;              // "" = markdown to stdout, no plots
  std::string gnuplot = "gnuplot";  // program (searched on PATH when it has no '/')
  // Runs whose labels share the part before their last '/' ("grpo-free/s1", "grpo-free/s2") form a group:
  // each plot draws the runs as thin lines in the group's colour and the group's mean as a thick one, and
  // the markdown adds a table of each group's last values (mean [min, max] across its runs).
  bool group = false;
};

// The group of a run label under ReportRun::group: the label up to its last '/', or the whole label.
std::string group_of(const std::string& label);

struct ReportResult {
  std::string markdown;
  std::vector<std::string> plots;    // PNG paths written, in report_metrics() order
  std::vector<std::string> skipped;  // metrics absent from every run
  bool plots_skipped = false;        // gnuplot missing (or no output dir)
};

// Reads the runs, writes out_dir/report.md (atomically; the directory is created) and one PNG per metric
// present in at least one run, or the markdown to stdout without out_dir. A missing gnuplot is a warning
// (markdown only); a failing gnuplot is moe::Error with its message.
ReportResult run_report(const ReportRun& run);

// Markdown of the runs: a table of runs, per run first/last/min/max of each of `keys` it has, the skipped
// keys, and `plot_note` and links to `plots` ((key, PNG file name relative to report.md) pairs).
// With `group`, also a table of each group's last values.
std::string report_markdown(const std::vector<RunMetrics>& runs, const std::vector<std::string>& keys,
                            const std::vector<std::pair<std::string, std::string>>& plots,
                            const std::vector<std::string>& skipped, const std::string& plot_note, bool group = false);

}  // namespace moe::eval
