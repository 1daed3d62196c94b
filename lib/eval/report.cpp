// moe-eval report: metrics JSONL -> markdown and gnuplot PNGs (no libtorch here).
#include "moe/eval/report.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "moe/cli/app.h"
#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/io/jsonl.h"

extern char** environ;

namespace moe::eval {
namespace fs = std::filesystem;

namespace {

using Series = std::map<std::string, std::vector<std::pair<double, double>>>;

void flatten(const nlohmann::json& j, const std::string& prefix, double step, Series& out) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string key = prefix + it.key();
    if (it->is_object()) {
      flatten(*it, key + "/", step, out);
    } else if (it->is_number() && key != "step") {
      const double v = it->get<double>();
      if (std::isfinite(v)) out[key].emplace_back(step, v);
    }
  }
}

std::string num(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", x);
  return buf;
}

std::string num17(double x) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  return buf;
}

// A file name for a metric key: "mismatch/k3_kl" -> "mismatch_k3_kl".
std::string plot_file(const std::string& key) {
  std::string s;
  for (char c : key) s += (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.') ? c : '_';
  return s + ".png";
}

// A gnuplot single-quoted string literal ('' is a quote inside).
std::string gp_str(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "''";
    else if (c == '\n' || c == '\r') out += ' ';
    else out += c;
  }
  return out + "'";
}

// Markdown table cell text (pipes would end the cell).
std::string md_cell(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|') out += "\\|";
    else if (c == '\n') out += ' ';
    else out += c;
  }
  return out;
}

// The executable `prog` resolves to ("" when not found): as given when it has a '/', else searched on PATH.
std::string find_program(const std::string& prog) {
  if (prog.find('/') != std::string::npos) return access(prog.c_str(), X_OK) == 0 ? prog : "";
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "";
  size_t start = 0;
  while (start <= p.size()) {
    size_t end = p.find(':', start);
    if (end == std::string::npos) end = p.size();
    std::string dir = p.substr(start, end - start);
    if (dir.empty()) dir = ".";
    std::string cand = dir + "/" + prog;
    struct stat st;
    if (stat(cand.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(cand.c_str(), X_OK) == 0) return cand;
    start = end + 1;
  }
  return "";
}

// A temporary directory removed with everything in it when this goes out of scope.
struct TempDir {
  std::string path;
  TempDir() {
    const char* t = std::getenv("TMPDIR");
    std::string tmpl = std::string(t && *t ? t : "/tmp") + "/moe-eval-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!mkdtemp(buf.data())) throw Error(tmpl + ": cannot create a temporary directory: " + std::strerror(errno));
    path = buf.data();
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// Runs `exe script` with stdin from /dev/null and stdout/stderr to `log`; returns the exit status
// (128 + signal when killed).
int run_program(const std::string& exe, const std::string& script, const std::string& log) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  std::vector<std::string> args = {exe, script};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid;
  int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw Error(exe + ": cannot run: " + std::strerror(rc));
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw Error(exe + ": waitpid: " + std::strerror(errno));
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

std::vector<std::string> metrics_to_report(const std::vector<std::string>& extra) {
  std::vector<std::string> keys = report_metrics();
  for (const auto& k : extra)
    if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
  return keys;
}

// Runs by group, groups in order of their first run.
std::vector<std::pair<std::string, std::vector<size_t>>> groups_of(const std::vector<RunMetrics>& runs) {
  std::vector<std::pair<std::string, std::vector<size_t>>> g;
  for (size_t i = 0; i < runs.size(); ++i) {
    const std::string name = group_of(runs[i].label);
    auto it = std::find_if(g.begin(), g.end(), [&](const auto& e) { return e.first == name; });
    if (it == g.end()) g.push_back({name, {i}});
    else it->second.push_back(i);
  }
  return g;
}

// A group's mean of one key over its runs, at the steps every run of it has (a run with several points at
// one step counts their mean).
std::vector<std::pair<double, double>> group_mean(const std::vector<RunMetrics>& runs, const std::vector<size_t>& members,
                                                  const std::string& key) {
  std::map<double, std::pair<double, size_t>> acc;  // step -> (sum of run means, runs)
  for (size_t i : members) {
    auto it = runs[i].series.find(key);
    if (it == runs[i].series.end()) return {};
    std::map<double, std::pair<double, size_t>> own;
    for (const auto& [x, y] : it->second) {
      own[x].first += y;
      ++own[x].second;
    }
    for (const auto& [x, sc] : own) {
      acc[x].first += sc.first / static_cast<double>(sc.second);
      ++acc[x].second;
    }
  }
  std::vector<std::pair<double, double>> out;
  for (const auto& [x, sc] : acc)
    if (sc.second == members.size()) out.emplace_back(x, sc.first / static_cast<double>(sc.second));
  return out;
}

}  // namespace

std::string group_of(const std::string& label) {
  const size_t slash = label.rfind('/');
  return slash == std::string::npos || slash == 0 ? label : label.substr(0, slash);
}

const std::vector<std::string>& report_metrics() {
  static const std::vector<std::string> keys = {
      "reward",       "val/accuracy",      "loss",           "entropy",
      "grad_norm",    "pg_clipfrac",       "pg_clipfrac_lower", "mismatch/k3_kl",
      "routing/token_mismatch", "router_shift/gamma_mean"};
  return keys;
}

RunMetrics read_metrics(const std::string& path, const std::string& label) {
  io::JsonlReader in(path);
  RunMetrics run;
  run.label = label;
  run.path = in.name();
  Series updates, summaries;
  nlohmann::json j;
  while (in.next(j)) {
    const std::string where = in.where();
    auto st = j.find("step");
    if (st == j.end() || !st->is_number() || !std::isfinite(st->get<double>()))
      throw Error(where + "no numeric \"step\" (is this a moe-train-step metrics file?)");
    const double step = st->get<double>();
    auto kind = j.find("kind");
    const bool summary = kind != j.end() && kind->is_string() && *kind == "summary";
    ++run.lines;
    if (summary) ++run.summary_lines;
    flatten(j, "", step, summary ? summaries : updates);
  }
  run.series = std::move(updates);
  for (auto& [k, pts] : summaries)
    if (!run.series.count(k)) run.series[k] = std::move(pts);
  for (auto& [k, pts] : run.series)
    std::stable_sort(pts.begin(), pts.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return run;
}

std::vector<std::string> run_labels(const std::vector<std::string>& paths, const std::vector<std::string>& labels) {
  if (!labels.empty()) {
    if (labels.size() != paths.size())
      throw UsageError("--label given " + std::to_string(labels.size()) + " times for " + std::to_string(paths.size()) +
                       " metrics files (give one per file, or none)");
    std::set<std::string> seen;
    for (const auto& l : labels) {
      if (l.empty()) throw UsageError("--label: empty label");
      if (!seen.insert(l).second) throw UsageError("--label: duplicate label '" + l + "'");
    }
    return labels;
  }
  auto label_of = [](const std::string& p, bool full) {
    if (p == "-" || p.empty()) return std::string("stdin");
    fs::path fp(p);
    return full ? (fp.parent_path() / fp.stem()).string() : fp.stem().string();
  };
  for (bool full : {false, true}) {
    std::vector<std::string> out;
    std::set<std::string> seen;
    for (const auto& p : paths) {
      out.push_back(label_of(p, full));
      seen.insert(out.back());
    }
    if (seen.size() == out.size()) return out;
  }
  throw UsageError("two metrics files give the same run label: name the runs with --label");
}

std::string report_markdown(const std::vector<RunMetrics>& runs, const std::vector<std::string>& keys,
                            const std::vector<std::pair<std::string, std::string>>& plots,
                            const std::vector<std::string>& skipped, const std::string& plot_note, bool group) {
  std::string md = "# Training report\n\n";
  md += "| run | file | lines | summary lines | steps |\n|---|---|---:|---:|---|\n";
  for (const auto& r : runs) {
    double lo = INFINITY, hi = -INFINITY;
    for (const auto& [k, pts] : r.series)
      for (const auto& p : pts) lo = std::min(lo, p.first), hi = std::max(hi, p.first);
    md += "| " + md_cell(r.label) + " | " + md_cell(r.path) + " | " + std::to_string(r.lines) + " | " +
          std::to_string(r.summary_lines) + " | " +
          (lo <= hi ? num(lo) + " .. " + num(hi) : std::string("-")) + " |\n";
  }
  for (const auto& r : runs) {
    md += "\n## " + md_cell(r.label) + "\n\n";
    std::string rows;
    for (const auto& k : keys) {
      auto it = r.series.find(k);
      if (it == r.series.end() || it->second.empty()) continue;
      const auto& pts = it->second;
      double mn = INFINITY, mx = -INFINITY;
      for (const auto& p : pts) mn = std::min(mn, p.second), mx = std::max(mx, p.second);
      rows += "| " + md_cell(k) + " | " + std::to_string(pts.size()) + " | " + num(pts.front().second) + " | " +
              num(pts.back().second) + " | " + num(mn) + " | " + num(mx) + " |\n";
    }
    if (rows.empty()) md += "No key metric in this run.\n";
    else md += "| metric | points | first | last | min | max |\n|---|---:|---:|---:|---:|---:|\n" + rows;
  }
  if (group) {
    md += "\n## Groups\n\nEach group's last value of a metric: mean [min, max] over its runs.\n\n| group | runs |";
    std::vector<std::string> shown;
    for (const auto& k : keys)
      if (std::any_of(runs.begin(), runs.end(), [&](const RunMetrics& r) { return r.series.count(k) && !r.series.at(k).empty(); }))
        shown.push_back(k);
    for (const auto& k : shown) md += " " + md_cell(k) + " |";
    md += "\n|---|---:|";
    for (size_t i = 0; i < shown.size(); ++i) md += "---|";
    md += "\n";
    for (const auto& [name, members] : groups_of(runs)) {
      md += "| " + md_cell(name) + " | " + std::to_string(members.size()) + " |";
      for (const auto& k : shown) {
        double sum = 0, mn = INFINITY, mx = -INFINITY;
        size_t n = 0;
        for (size_t i : members) {
          auto it = runs[i].series.find(k);
          if (it == runs[i].series.end() || it->second.empty()) continue;
          const double v = it->second.back().second;
          sum += v, mn = std::min(mn, v), mx = std::max(mx, v), ++n;
        }
        md += n == 0 ? std::string(" - |") : " " + num(sum / static_cast<double>(n)) + " [" + num(mn) + ", " + num(mx) + "]" +
                                                 (n < members.size() ? " (" + std::to_string(n) + " runs)" : "") + " |";
      }
      md += "\n";
    }
  }
  if (!skipped.empty()) {
    md += "\nNot in any run (skipped):";
    for (size_t i = 0; i < skipped.size(); ++i) md += (i ? ", `" : " `") + skipped[i] + "`";
    md += ".\n";
  }
  md += "\n## Plots\n\n";
  if (!plot_note.empty()) md += plot_note + "\n";
  for (const auto& [key, file] : plots) md += "![" + key + "](" + file + ")\n";
  return md;
}

ReportResult run_report(const ReportRun& rr) {
  if (rr.files.empty()) throw UsageError("report: no metrics file");
  const std::vector<std::string> labels = run_labels(rr.files, rr.labels);
  std::vector<RunMetrics> runs;
  for (size_t i = 0; i < rr.files.size(); ++i) runs.push_back(read_metrics(rr.files[i], labels[i]));

  const std::vector<std::string> keys = metrics_to_report(rr.extra_metrics);
  ReportResult res;
  std::vector<std::string> present;
  for (const auto& k : keys) {
    bool any = false;
    for (const auto& r : runs) {
      auto it = r.series.find(k);
      any = any || (it != r.series.end() && !it->second.empty());
    }
    (any ? present : res.skipped).push_back(k);
  }
  if (!res.skipped.empty()) {
    std::string s;
    for (const auto& k : res.skipped) s += (s.empty() ? "" : ", ") + k;
    cli::info("not in any run, skipped: " + s);
  }

  std::string note;
  std::vector<std::pair<std::string, std::string>> plot_names;  // (key, file)
  if (!rr.out_dir.empty()) {
    std::error_code ec;
    fs::create_directories(rr.out_dir, ec);
    if (ec) throw Error(rr.out_dir + ": cannot create the directory: " + ec.message());
  }
  if (rr.out_dir.empty()) {
    res.plots_skipped = true;
    note = "No plots: they are written only with an output directory (-o DIR).";
  } else if (present.empty()) {
    note = "No plots: no run has any of the metrics.";
  } else {
    const std::string exe = find_program(rr.gnuplot);
    if (exe.empty()) {
      res.plots_skipped = true;
      note = "Plots skipped: gnuplot was not found.";
      cli::warn("gnuplot not found (" + rr.gnuplot + "): plots skipped, wrote the markdown only");
    } else {
      TempDir tmp;
      std::string script =
          "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
          "  set terminal pngcairo size 900,540 font ',10'\n"
          "} else {\n"
          "  set terminal png size 900,540\n"
          "}\n"
          "set termoption noenhanced\n"
          "set grid\n"
          "set key outside right top\n"
          "set xlabel 'step'\n";
      const auto groups = groups_of(runs);
      std::vector<size_t> group_index(runs.size());  // colour of a run under --group: its group's
      for (size_t g = 0; g < groups.size(); ++g)
        for (size_t i : groups[g].second) group_index[i] = g;
      for (const auto& k : present) {
        std::string plot;
        double lo = INFINITY, hi = -INFINITY, xlo = INFINITY, xhi = -INFINITY;
        auto write_dat = [&](const std::string& name, const std::vector<std::pair<double, double>>& pts) {
          const std::string dat = tmp.path + "/" + std::to_string(plot_names.size()) + "." + name + ".dat";
          std::string body;
          for (const auto& [x, y] : pts) {
            body += num17(x) + " " + num17(y) + "\n";
            lo = std::min(lo, y);
            hi = std::max(hi, y);
            xlo = std::min(xlo, x);
            xhi = std::max(xhi, x);
          }
          io::Output o(dat);
          o.write(body);
          o.close();
          return dat;
        };
        for (size_t i = 0; i < runs.size(); ++i) {
          auto it = runs[i].series.find(k);
          if (it == runs[i].series.end() || it->second.empty()) continue;
          const std::string dat = write_dat(std::to_string(i), it->second);
          plot += std::string(plot.empty() ? "plot " : ", ") + gp_str(dat) +
                  (rr.group ? " using 1:2 with lines lw 1 lc " + std::to_string(group_index[i] + 1) + " notitle"
                            : " using 1:2 with linespoints pt 7 ps 0.6 title " + gp_str(runs[i].label));
        }
        if (rr.group) {
          for (size_t g = 0; g < groups.size(); ++g) {
            const auto mean = group_mean(runs, groups[g].second, k);
            if (mean.empty()) continue;
            const std::string dat = write_dat("mean" + std::to_string(g), mean);
            plot += ", " + gp_str(dat) + " using 1:2 with lines lw 3 lc " + std::to_string(g + 1) + " title " +
                    gp_str(groups[g].first + " (mean of " + std::to_string(groups[g].second.size()) + ")");
          }
        }
        // Keys that sanitise alike ("a/b", "a_b") get distinct files.
        std::string png = plot_file(k);
        for (int n = 2; std::any_of(plot_names.begin(), plot_names.end(), [&](const auto& p) { return p.second == png; }); ++n)
          png = plot_file(k).insert(plot_file(k).size() - 4, "_" + std::to_string(n));
        script += "set output " + gp_str((fs::path(rr.out_dir) / png).string()) + "\n";
        // Ranges are the data's plus a margin (gnuplot would round them out to whole ticks).
        auto range = [](const char* axis, double a, double b, double frac) {
          const double pad = b > a ? frac * (b - a) : std::max(std::fabs(b) * 0.1, 1e-6);
          return std::string("set ") + axis + " [" + num17(a - pad) + ":" + num17(b + pad) + "]\n";
        };
        script += range("xrange", xlo, xhi, 0.02) + range("yrange", lo, hi, 0.06);
        script += "set title " + gp_str(k) + "\nset ylabel " + gp_str(k) + "\n" + plot + "\nunset output\n";
        plot_names.emplace_back(k, png);
      }
      const std::string script_path = tmp.path + "/plots.gp", log = tmp.path + "/gnuplot.log";
      io::write_file_atomic(script_path, script);
      const int rc = run_program(exe, script_path, log);
      if (rc != 0) {
        std::string msg;
        try {
          msg = io::read_file(log);
        } catch (const Error&) {
        }
        if (msg.size() > 2000) msg = msg.substr(0, 2000) + "...";
        while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
        throw Error(exe + " failed (exit " + std::to_string(rc) + ")" + (msg.empty() ? "" : ": " + msg));
      }
      for (const auto& [key, file] : plot_names) {
        const std::string full = (fs::path(rr.out_dir) / file).string();
        if (!fs::exists(full)) throw Error(exe + " wrote no " + full);
        res.plots.push_back(full);
      }
    }
  }
  res.markdown = report_markdown(runs, keys, plot_names, res.skipped, note, rr.group);
  if (rr.out_dir.empty()) {
    io::Output out("-");
    out.write(res.markdown);
    out.close();
  } else {
    const std::string md = (fs::path(rr.out_dir) / "report.md").string();
    io::write_file_atomic(md, res.markdown);
    cli::info("wrote " + md + (res.plots.empty() ? "" : " and " + std::to_string(res.plots.size()) + " plots"));
  }
  return res;
}

}  // namespace moe::eval
