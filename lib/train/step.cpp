// The moe-train-step driver: inputs, old pass, mini-batches over epochs (or SFT steps), metrics lines,
// checkpoint. Data parallel: every rank reads the whole input and owns the sequences i with
// i % world_size == rank (their old pass and their share of every mini-batch); mini-batch composition and
// shuffling are identical on every rank, so N processes compute the single-process update (trainer.cpp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <numeric>
#include <random>

#include "moe/dist/communicator.h"
#include "moe/algo/router.h"
#include "moe/cli/app.h"
#include "moe/format/rollout.h"
#include "moe/format/routing.h"
#include "moe/io/error.h"
#include "moe/io/file.h"
#include "moe/io/jsonl.h"
#include "moe/io/lock.h"
#include "moe/model/config.h"
#include "moe/tokenizer/tokenizer.h"
#include "moe/model/checkpoint_files.h"
#include "moe/train/step.h"

namespace moe::train {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string where(const std::string& name, uint64_t offset) { return name + ": offset " + std::to_string(offset) + ": "; }

// Input kind by magic bytes: a zstd frame (rollout stream) or JSON lines.
enum class InputKind { stream, jsonl };

struct Spooled {
  std::string path;  // a path io::Input can open (a memfd for stdin)
  InputKind kind = InputKind::stream;
  std::string text;  // JSONL contents when read from stdin or another input that is not a regular file
  std::string name;  // that input's name in messages ("<stdin>", the path)
  int fd = -1;
  ~Spooled() {
    if (fd >= 0) ::close(fd);
  }
};

InputKind kind_of(const unsigned char* p, size_t n, const std::string& name) {
  if (n >= 4 && p[0] == 0x28 && p[1] == 0xb5 && p[2] == 0x2f && p[3] == 0xfd) return InputKind::stream;
  size_t i = 0;
  while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n')) ++i;
  if (i < n && p[i] == '{') return InputKind::jsonl;
  if (n == 0) throw Error(name + ": empty input");
  throw Error(name + ": neither a rollout stream (zstd) nor prompt+solution JSONL");
}

// SFT input: JSONL or a rollout stream, told apart by the first bytes. A regular file is sniffed and opened
// again; anything else (stdin, a FIFO, a process substitution, a device) can be read once only, so it is
// read whole here: JSONL stays in memory, a stream goes to a memfd the stream reader opens.
void detect(const std::string& path, Spooled& s) {
  const bool std_in = path.empty() || path == "-";
  struct stat st{};
  if (!std_in && ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
    io::Input in(path);
    unsigned char head[256];
    size_t n = 0;
    for (size_t r; n < sizeof head && (r = in.read(head + n, sizeof head - n)) > 0;) n += r;
    s.kind = kind_of(head, n, in.name());
    s.path = path;
    return;
  }
  const std::string name = std_in ? "<stdin>" : path;
  std::string all = io::read_file(std_in ? "-" : path);
  s.kind = kind_of(reinterpret_cast<const unsigned char*>(all.data()), all.size(), name);
  s.name = name;
  if (s.kind == InputKind::jsonl) {
    s.text = std::move(all);
    return;
  }
  s.fd = ::memfd_create("moe-train-step-input", 0);
  if (s.fd < 0) throw Error(name + ": cannot spool: " + std::strerror(errno));
  for (size_t off = 0; off < all.size();) {
    ssize_t w = ::write(s.fd, all.data() + off, all.size() - off);
    if (w <= 0) throw Error(name + ": cannot spool: " + std::strerror(errno));
    off += static_cast<size_t>(w);
  }
  s.path = "/proc/self/fd/" + std::to_string(s.fd);
}

// prompt+solution JSONL -> sequences (response = solution tokens + eos).
void read_sft_jsonl(const std::string& name, const std::string& text, const tokenizer::Tokenizer& tok,
                    const StepConfig& cfg, int64_t max_positions, std::vector<Sequence>& out) {
  size_t pos = 0;
  for (int64_t lineno = 1; pos < text.size(); ++lineno) {
    size_t e = text.find('\n', pos);
    if (e == std::string::npos) e = text.size();
    std::string line = text.substr(pos, e - pos);
    const size_t line_offset = pos;
    pos = e + 1;
    const std::string at = name + ":" + std::to_string(lineno) + ": ";
    nlohmann::json j;
    if (!io::parse_jsonl_line(line, at, j, line_offset)) continue;
    for (const std::string* k : {&cfg.prompt_key, &cfg.solution_key})
      if (!j.contains(*k) || !j[*k].is_string()) throw Error(at + "no string \"" + *k + "\" (SFT JSONL needs prompt and solution)");
    Sequence s;
    s.id = out.size();
    try {
      s.prompt = tok.encode(j[cfg.prompt_key].get<std::string>());
      s.response = tok.encode(j[cfg.solution_key].get<std::string>());
    } catch (const Error& ex) {
      throw Error(at + ex.what());
    }
    if (s.prompt.empty()) throw Error(at + "empty prompt");
    s.response.push_back(tok.eos_id());
    if (static_cast<int64_t>(s.prompt.size() + s.response.size()) > max_positions)
      throw Error(at + "prompt and solution of " + std::to_string(s.prompt.size() + s.response.size()) +
                  " tokens are longer than the model's max_position_embeddings (" + std::to_string(max_positions) + ")");
    out.push_back(std::move(s));
  }
}

// --metrics FILE. A regular file (or a new path) is one of the step's staged outputs: its lines are held
// until the step commits, then the file is replaced by its old contents plus them (temp + rename, beside
// the checkpoint swap), so a failed step adds no line. A FIFO, a device or /dev/stderr gets every line at
// once, appended in place.
struct MetricsSink {
  std::FILE* live = nullptr;
  bool to_stderr = false;
  std::string path, pending;
  std::unique_ptr<io::Output> staged;
  ~MetricsSink() {
    if (live) std::fclose(live);
  }
  void open(const std::string& p) {
    path = p;
    struct stat st;
    const bool special = p.rfind("/dev/", 0) == 0 || p.rfind("/proc/", 0) == 0;
    if (special || (::stat(p.c_str(), &st) == 0 && !S_ISREG(st.st_mode))) {
      live = std::fopen(p.c_str(), "a");
      if (!live) throw Error(p + ": cannot open for appending: " + std::strerror(errno));
    } else {
      staged = std::make_unique<io::Output>(p);  // checks now that the directory is writable
    }
  }
  void line(const nlohmann::json& j, bool also_stderr) {
    const std::string s = j.dump() + "\n";
    if (live && (std::fwrite(s.data(), 1, s.size(), live) != s.size() || std::fflush(live) != 0))
      throw Error(path + ": cannot write metrics: " + std::strerror(errno));
    if (staged) pending += s;
    if (also_stderr) std::fputs(s.c_str(), stderr);
  }
  // Writes old contents + the new lines to the temporary and syncs it; commit() renames it into place.
  void prepare() {
    if (!staged) return;
    struct stat st;
    if (::stat(path.c_str(), &st) == 0) staged->write(io::read_file(path));
    staged->write(pending);
    staged->prepare();
  }
  void commit() {
    if (staged) staged->commit();
  }
};

nlohmann::json metrics_json(const algo::Metrics& m) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [k, v] : m) {
    if (std::isfinite(v)) j[k] = v;
    else j[k] = nullptr;
  }
  return j;
}

void fault_hook(int rank, int64_t update) {
  // Test hook (tests/cli/train.bats): MOEKIT_TRAIN_FAULT=RANK:UPDATE kills that rank before that update.
  const char* f = std::getenv("MOEKIT_TRAIN_FAULT");
  if (!f) return;
  int r = -1;
  long long u = -1;
  if (std::sscanf(f, "%d:%lld", &r, &u) == 2 && r == rank && u == update) {
    std::fprintf(stderr, "moe-train-step: MOEKIT_TRAIN_FAULT: rank %d exits before update %lld\n", r, u);
    std::fflush(stderr);
    ::_exit(3);
  }
}

// Joins the current stream of `rr` to the rollouts `out` (read from a stream whose header meta is
// `rollout_meta`) by id: every rollout gets its routing at positions 0 .. P+R-2, or moe::Error naming the
// routing stream. Headers that both carry `seed` or `batch` (moe-rollout writes them) must agree: a routing
// stream of another batch whose ids and lengths happen to fit is an error, not a silent mismatch.
void join_routing(format::RoutingReader& rr, const nlohmann::json& rollout_meta, const model::ModelConfig& mc,
                  std::vector<Sequence>& out) {
  const int64_t L = mc.num_moe_layers(), K = mc.num_experts_per_tok, E = mc.num_experts;
  const std::string digest = model::config_digest(mc);
  const std::string rname = rr.name();
  const auto& m = rr.meta();
  std::vector<int> ids = mc.moe_layer_ids();
  if (m.num_layers != L || m.top_k != K || m.num_experts != E || m.layer_ids != ids)
    throw Error(rname + ": routing stream shape (" + std::to_string(m.num_layers) + " MoE layers, top-" + std::to_string(m.top_k) +
                " of " + std::to_string(m.num_experts) + " experts) does not match the model (" + std::to_string(L) +
                " MoE layers, top-" + std::to_string(K) + " of " + std::to_string(E) + ")");
  if (!m.model_digest.empty() && m.model_digest != digest)
    throw Error(rname + ": routing stream comes from another model (model_digest " + m.model_digest + ", this model " + digest + ")");
  const nlohmann::json& rmeta = rr.header().meta;
  for (const char* key : {"batch", "seed"}) {
    if (!rollout_meta.is_object() || !rmeta.is_object() || !rollout_meta.contains(key) || !rmeta.contains(key)) continue;
    const nlohmann::json &a = rollout_meta[key], &b = rmeta[key];
    if (a.is_number() && b.is_number() && a != b)
      throw Error(rname + ": the routing stream belongs to another batch than the rollouts (routing header " + key + " " +
                  b.dump() + ", rollout header " + key + " " + a.dump() + ")");
  }
  // Each routing record is checked against its rollout as it arrives and only the positions training needs
  // are kept, so the memory is bounded by the rollouts, whatever the routing stream declares.
  std::map<uint64_t, size_t> index;  // rollout id -> sequence
  for (size_t i = 0; i < out.size(); ++i) index.emplace(out[i].id, i);
  std::vector<bool> routed(out.size(), false);
  rr.set_max_positions(mc.max_position_embeddings);
  format::RoutingRecord rec;
  while (rr.next(rec)) {
    auto it = index.find(rec.id);
    if (it == index.end()) continue;  // routing of a rollout not trained on (e.g. dropped by moe-reward)
    Sequence& s = out[it->second];
    if (routed[it->second])
      throw Error(where(rname, rr.offset()) + "duplicate routing record id " + std::to_string(rec.id));
    const int64_t need = static_cast<int64_t>(s.prompt.size() + s.response.size()) - 1;
    const int64_t first = rec.first_pos, n = rec.n_pos;
    if (first > 0 || first + n < need)
      throw Error(where(rname, rr.offset()) + "routing record " + std::to_string(s.id) + " covers positions " +
                  std::to_string(first) + ".." + std::to_string(first + n - 1) + ", training needs 0.." +
                  std::to_string(need - 1));
    at::Tensor t = at::empty({need, L, K}, at::kLong);
    int64_t* p = t.data_ptr<int64_t>();
    const uint16_t* src = rec.experts.data() + static_cast<size_t>(-first) * L * K;
    for (int64_t i = 0; i < need * L * K; ++i) p[i] = src[i];
    s.rollout_routing = t;
    routed[it->second] = true;
  }
  for (size_t i = 0; i < out.size(); ++i)
    if (!routed[i]) throw Error(rname + ": no routing record for rollout id " + std::to_string(out[i].id));
}

}  // namespace

double read_rollouts(const std::string& path, const std::string& routing_path, const model::ModelConfig& mc,
                     bool need_advantage, std::vector<Sequence>& out, nlohmann::json* meta_out) {
  io::Input in(path);
  format::RolloutReader r(in);
  return read_rollouts(r, routing_path, mc, need_advantage, out, meta_out);
}

double read_rollouts(format::RolloutReader& r, const std::string& routing_path, const model::ModelConfig& mc,
                     bool need_advantage, std::vector<Sequence>& out, nlohmann::json* meta_out) {
  const std::string digest = model::config_digest(mc);
  const auto& meta = r.header().meta;
  if (meta_out) *meta_out = meta;
  double temperature = 1.0;
  if (meta.contains("temperature") && meta["temperature"].is_number()) temperature = meta["temperature"].get<double>();
  if (!(temperature > 0)) throw Error(r.name() + ": header temperature must be > 0");
  if (meta.contains("vocab_size") && meta["vocab_size"].is_number_integer() && meta["vocab_size"].get<int64_t>() > mc.vocab_size)
    throw Error(r.name() + ": rollouts use a vocabulary of " + std::to_string(meta["vocab_size"].get<int64_t>()) +
                " tokens, the model has " + std::to_string(mc.vocab_size));
  if (meta.contains("model_digest") && meta["model_digest"].is_string() && meta["model_digest"] != digest)
    cli::warn(r.name() + ": rollouts come from a model of another shape (digest " + meta["model_digest"].get<std::string>() +
              ", this model " + digest + ")");
  format::RolloutRecord rec;
  std::map<uint64_t, bool> seen;
  while (r.next(rec)) {
    const std::string at = where(r.name(), r.offset());
    if (!seen.emplace(rec.id, true).second) throw Error(at + "duplicate record id " + std::to_string(rec.id));
    Sequence s;
    s.id = rec.id;
    s.prompt.assign(rec.prompt_tokens.begin(), rec.prompt_tokens.end());
    s.response.assign(rec.response_tokens.begin(), rec.response_tokens.end());
    if (s.prompt.empty()) throw Error(at + "record " + std::to_string(rec.id) + " has no prompt tokens");
    if (s.response.empty()) throw Error(at + "record " + std::to_string(rec.id) + " has no response tokens");
    if (static_cast<int64_t>(s.prompt.size() + s.response.size()) > mc.max_position_embeddings)
      throw Error(at + "record " + std::to_string(rec.id) + ": " + std::to_string(s.prompt.size() + s.response.size()) +
                  " tokens, longer than the model's max_position_embeddings (" + std::to_string(mc.max_position_embeddings) + ")");
    for (const auto* v : {&s.prompt, &s.response})
      for (int64_t t : *v)
        if (t < 0 || t >= mc.vocab_size)
          throw Error(at + "record " + std::to_string(rec.id) + ": token " + std::to_string(t) + " outside the model vocabulary");
    if (need_advantage) {
      if (!rec.advantage) throw Error(at + "record " + std::to_string(rec.id) + " has no advantage (pipe the rollouts through moe-reward)");
      s.advantage = *rec.advantage;
    }
    if (!rec.logprobs.empty()) {
      if (rec.logprobs.size() != s.response.size())
        throw Error(at + "record " + std::to_string(rec.id) + " has " + std::to_string(rec.logprobs.size()) + " log-probs for " +
                    std::to_string(s.response.size()) + " response tokens");
      s.logp_roll = rec.logprobs;
    }
    out.push_back(std::move(s));
    rec = format::RolloutRecord{};
  }
  // The routing stream is opened only after the rollout stream reached its end: in
  // `moe-rollout --routing-out R | moe-reward | moe-train-step --routing R`, R is complete (renamed into
  // place) before moe-rollout closes its stdout.
  if (routing_path.empty()) return temperature;
  io::Input rin(routing_path);
  format::RoutingReader rr(rin);
  join_routing(rr, meta, mc, out);
  return temperature;
}

algo::Metrics run_train_step(const StepConfig& cfg_in) {
  StepConfig cfg = cfg_in;
  TrainConfig& tc = cfg.train;
  if (cfg.mini_batches < 1) throw UsageError("--mini-batches must be >= 1");
  if (cfg.epochs < 1) throw UsageError("--epochs must be >= 1");
  if (tc.micro_batch < 1) throw UsageError("--micro-batch must be >= 1");
  if (cfg.sft_steps < 0 || cfg.sft_batch_size < 0) throw UsageError("--steps and --batch-size must be >= 0");
  if (!tc.sft && cfg.sft_steps > 0) throw UsageError("--steps applies to --algo sft only");
  if (tc.router == RouterControl::replay_rollout && cfg.routing.empty())
    throw UsageError("--router replay-rollout needs the rollout's routing stream (--routing FILE)");
  if (tc.sft && tc.router != RouterControl::free) throw UsageError("--router applies to RL algorithms, not --algo sft");
  if (!tc.sft) {
    tc.loss = algo::with_defaults(tc.loss);
    if (tc.loss.kl_coef != 0 && cfg.ref_dir.empty()) throw UsageError("--kl-coef needs a reference model (--ref DIR)");
  }
  if (!(tc.optim.lr > 0)) throw UsageError("--lr must be > 0");
  if (cfg.save_every < 1) throw UsageError("--save-every must be >= 1");
  if (cfg.save_every != 1 && !cfg.follow) throw UsageError("--save-every needs --follow (one step writes one checkpoint)");
  if (cfg.follow) {
    if (cfg.dist.world_size > 1) throw UsageError("--follow runs in one process (no data parallel)");
    if (!cfg.routing_out.empty()) throw UsageError("--follow does not take --routing-out");
  }
  if (tc.sft && !cfg.routing.empty()) throw UsageError("--routing applies to RL algorithms");
  const bool loss_scale_given = tc.loss.loss_scale > 0;
  const std::string out_dir = cfg.output_dir.empty() ? cfg.model_dir : cfg.output_dir;
  io::check_not_staging(cfg.model_dir);
  io::check_not_staging(out_dir);
  // One writer per model dir for the whole read-modify-write of a step (rank 0 writes; it holds the lock).
  std::unique_ptr<io::DirLock> lock;
  if (cfg.dist.rank == 0) {
    lock = std::make_unique<io::DirLock>(out_dir, cfg.wait_lock);
    if (int n = io::clean_stale_staging(out_dir))
      cli::info(out_dir + ": removed " + std::to_string(n) + " staging dir(s) left by an interrupted step");
  }
  model::set_threads(cfg.threads);
  at::manual_seed(cfg.seed);
  double t_start = now_s();

  c10::Device device = model::parse_device(cfg.device);
  tc.compute_dtype = model::parse_dtype(cfg.dtype);
  if (tc.compute_dtype == at::kHalf) throw UsageError("--dtype f16 is not supported for training (no loss scaling): use bf16");
  // Expert parallel: each rank materialises only its experts (shard).
  model::ExpertShard shard;
  std::unique_ptr<Communicator> comm = dist::open_group(cfg.dist, device, shard);
  const int rank = comm ? comm->rank() : 0, world = comm ? comm->world_size() : 1;

  model::Qwen3Moe model = model::load_model(cfg.model_dir, device, at::kFloat, shard);
  const model::ModelConfig& mc = model->config();
  // The router-shift ratio (rspo, --router-shift) compares each token's routing before and after: a model
  // without MoE layers has none, and its factors would be an empty product.
  if (!tc.sft && algo::with_defaults(tc.loss).router_shift && mc.moe_layer_ids().empty())
    throw UsageError(cfg.model_dir + ": the router-shift ratio (--algo rspo, --router-shift) needs MoE layers, and the model has none");
  // Every file of the model dir that is not ours (tokenizer files, generation_config.json, README, ...) goes
  // into the output dir unchanged.
  std::vector<std::pair<std::string, std::string>> extra = model::companion_files(cfg.model_dir);

  // Inputs.
  std::vector<Sequence> seqs;
  // The header settings a rollout stream carries: its sampling temperature, and the default C of
  // seq-mean-token-sum-norm.
  auto take_stream_settings = [&](const std::string& name, double T, const nlohmann::json& meta) {
    if (tc.sft) return;
    tc.temperature = T;
    if (algo::effective_agg(tc.loss) == algo::Agg::seq_mean_token_sum_norm && !loss_scale_given) {
      if (!meta.is_object() || !meta.contains("max_new_tokens") || !meta["max_new_tokens"].is_number() ||
          !(meta["max_new_tokens"].get<double>() >= 1))
        throw Error(name + ": the rollout header has no max_new_tokens >= 1, the default C of "
                    "seq-mean-token-sum-norm: give --loss-scale C");
      tc.loss.loss_scale = meta["max_new_tokens"].get<double>();
    }
  };
  // --follow: concatenated rollout streams, one step each; errors name the stream (1-based).
  // With --routing R: R holds concatenated routing streams, the k-th for the k-th rollout stream (moe-rollout
  // --follow --routing-out R writes one per batch; moe-reward --follow keeps the order).
  //
  // Why `moe-rollout --follow --routing-out R | moe-reward --follow | moe-train-step --follow --routing R`
  // cannot deadlock with R a FIFO, whatever the sizes: moe-rollout writes batch k's rollout stream whole
  // (trailer, flush) to stdout and only then batch k's routing stream to R; this loop reads rollout stream k
  // to its trailer and only then routing stream k from R, to its trailer, before it trains. Each side waits
  // for the other only in that order, so no wait closes a cycle:
  // - moe-rollout blocked on stdout (rollouts k) waits for moe-reward, which waits for this process to read
  //   its stdin; this process reads it unless it is reading routing k-1 (all of it already written to R, so
  //   that ends) or training step k-1 (which ends);
  // - moe-rollout blocked on R (routing k, more than a pipe buffer) waits for this process, which reads R as
  //   soon as rollout stream k, complete in the pipes before routing k was begun, has been read;
  // - R is opened on both sides only after the first rollout stream is complete (moe-rollout) or read (here):
  //   opening a FIFO blocks until the other end opens it, so an early open on either side would wait for a
  //   peer that waits on the pipeline. Both ends stay open until the end: R is one byte stream, and
  //   StreamReader reads nothing past a trailer until the next stream is asked for.
  // The reverse order on either side (routing first, or routing records interleaved with rollouts as the
  // one-shot moe-rollout writes them) deadlocks once a routing stream exceeds the pipe buffer (64 KiB).
  std::unique_ptr<io::Input> follow_in, follow_rin;
  std::unique_ptr<format::RolloutReader> follow;
  std::unique_ptr<format::RoutingReader> follow_routing;
  int64_t stream_no = 1;
  auto in_stream = [&](const std::exception& e) { return Error("stream " + std::to_string(stream_no) + ": " + e.what()); };
  auto read_next = [&] {
    nlohmann::json meta;
    const double T = read_rollouts(*follow, "", mc, !tc.sft, seqs, &meta);
    take_stream_settings(follow->name(), T, meta);
    if (seqs.empty()) throw Error(follow->name() + ": no records to train on");
    if (cfg.routing.empty()) return;
    if (!follow_routing) {
      follow_rin = std::make_unique<io::Input>(cfg.routing);
      follow_routing = std::make_unique<format::RoutingReader>(*follow_rin, true);
    } else if (!follow_routing->next_stream()) {
      throw Error(follow_routing->name() + ": ended after " + std::to_string(stream_no - 1) +
                  " routing streams: none for this rollout stream");
    }
    join_routing(*follow_routing, meta, mc, seqs);
  };
  if (cfg.follow) {
    try {
      follow_in = std::make_unique<io::Input>(cfg.input);
      follow = std::make_unique<format::RolloutReader>(*follow_in, true);
      read_next();
    } catch (const Error& e) {
      throw in_stream(e);
    }
  } else {
    Spooled sp;
    if (tc.sft) detect(cfg.input, sp);
    if (tc.sft && sp.kind == InputKind::jsonl) {
      auto tok = tokenizer::Tokenizer::load_dir(cfg.model_dir);
      if (tok.eos_id() < 0) throw Error(cfg.model_dir + ": the tokenizer has no eos token to end SFT responses with");
      std::string text = sp.text;
      std::string name = sp.name;
      if (!sp.path.empty()) {
        text = io::read_file(sp.path);
        name = sp.path;
      }
      read_sft_jsonl(name, text, tok, cfg, mc.max_position_embeddings, seqs);
    } else {
      nlohmann::json meta;
      const std::string path = sp.path.empty() ? cfg.input : sp.path;
      const double T = read_rollouts(path, cfg.routing, mc, !tc.sft, seqs, &meta);
      // Dr.GRPO's C: a constant, by default the generation budget the rollouts were sampled with.
      take_stream_settings(path == "-" ? "<stdin>" : path, T, meta);
    }
  }
  if (seqs.empty()) throw Error((cfg.input == "-" ? std::string("<stdin>") : cfg.input) + ": no records to train on");
  if (tc.sft && cfg.sft_steps == 0 && cfg.sft_batch_size > 0) throw UsageError("--batch-size needs --steps");
  tc.record_routing = !cfg.routing_out.empty();

  std::unique_ptr<model::Qwen3Moe> ref;
  if (!cfg.ref_dir.empty()) {
    // Expert parallel: the reference model's experts are sharded as the policy's (same owners, same group).
    ref = std::make_unique<model::Qwen3Moe>(model::load_model(cfg.ref_dir, device, tc.compute_dtype, shard));
    if (model::config_digest((*ref)->config()) != model::config_digest(mc) || (*ref)->config().vocab_size != mc.vocab_size)
      throw Error(cfg.ref_dir + ": the reference model has another shape than " + cfg.model_dir);
  }

  Trainer trainer(model, tc, comm.get());
  trainer.load_state(cfg.model_dir);

  // --follow --save-every N: steps done since the last checkpoint, and the trainer_state.json settings of the
  // latest of them (what its checkpoint would have held).
  int64_t unsaved = 0;
  nlohmann::json unsaved_extra;

  // One step on `seqs`: old pass, updates, outputs, checkpoint (unless `save` is false: --save-every).
  auto one_step = [&](bool save) -> algo::Metrics {
    MetricsSink sink;
    if (rank == 0) {
      if (!cfg.metrics_path.empty()) sink.open(cfg.metrics_path);
      sink.to_stderr = !cli::quiet() && (cfg.metrics_path.empty() ? !tc.sft || cfg.sft_steps == 0 : false);
    }

    // Ownership: sequence i belongs to rank i % world.
    std::vector<size_t> owned;
    for (size_t i = 0; i < seqs.size(); ++i)
      if (static_cast<int>(i % world) == rank) owned.push_back(i);

    // Mini-batch order (RL): a permutation per epoch, from one generator seeded per step.
    std::mt19937_64 rng(cfg.seed);
    auto permutation = [&](size_t n) {
      std::vector<size_t> order(n);
      std::iota(order.begin(), order.end(), 0);
      if (cfg.shuffle) std::shuffle(order.begin(), order.end(), rng);
      return order;
    };
    const bool rl_updates = !(tc.sft && cfg.sft_steps > 0);
    const std::vector<size_t> order0 = rl_updates && cfg.epochs > 0 ? permutation(seqs.size()) : std::vector<size_t>{};
    const int64_t n_mb = std::min<int64_t>(cfg.mini_batches, static_cast<int64_t>(seqs.size()));
    auto mini_batch = [&](const std::vector<size_t>& order, int64_t k) {
      const int64_t N = static_cast<int64_t>(order.size());
      return std::vector<size_t>(order.begin() + k * N / n_mb, order.begin() + (k + 1) * N / n_mb);
    };

    // Old pass on owned sequences (RL), scattered back into a full-size vector. The first update's own
    // sequences may be left to its forward (Trainer::old_pass, first_update).
    std::vector<OldPass> old(seqs.size());
    double t_old = 0;
    if (!tc.sft) {
      const double t0 = now_s();
      std::vector<char> first(seqs.size(), 0);
      if (!order0.empty() && n_mb > 0)
        for (size_t i : mini_batch(order0, 0)) first[i] = 1;
      std::vector<Sequence> mine;
      std::vector<char> mine_first;
      for (size_t i : owned) {
        mine.push_back(seqs[i]);
        mine_first.push_back(first[i]);
      }
      std::vector<OldPass> o;
      trainer.old_pass(mine, o, ref.get(), mine_first);
      for (size_t j = 0; j < owned.size(); ++j) old[owned[j]] = std::move(o[j]);
      t_old = now_s() - t0;
    }

    // Updates.
    const double t_upd0 = now_s();
    int64_t updates = 0;
    double loss_sum = 0, trained_tokens = 0;
    auto run_update = [&](const std::vector<size_t>& mb, nlohmann::json where_) {
      std::vector<size_t> local;
      int64_t tokens = 0, max_len = 0;
      for (size_t i : mb) {
        if (static_cast<int>(i % world) == rank) local.push_back(i);
        tokens += static_cast<int64_t>(seqs[i].response.size());
        max_len = std::max<int64_t>(max_len, seqs[i].response.size());
      }
      fault_hook(rank, updates + 1);
      const double t0 = now_s();
      algo::Metrics m = trainer.update(seqs, old, local, static_cast<int64_t>(mb.size()), tokens, max_len);
      m["seconds"] = now_s() - t0;
      ++updates;
      loss_sum += m["loss"];
      trained_tokens += static_cast<double>(tokens);
      nlohmann::json j = metrics_json(m);
      j["kind"] = "update";
      for (auto& [k, v] : where_.items()) j[k] = v;
      j["sequences"] = mb.size();
      if (rank == 0) sink.line(j, sink.to_stderr);
    };

    if (tc.sft && cfg.sft_steps > 0) {
      const size_t bs = cfg.sft_batch_size > 0 ? static_cast<size_t>(cfg.sft_batch_size) : std::min<size_t>(32, seqs.size());
      cli::Progress progress("sft", cfg.sft_steps, "step");
      std::vector<size_t> order = permutation(seqs.size());
      size_t pos = 0;
      int64_t pass = 0;
      for (int64_t step = 0; step < cfg.sft_steps; ++step) {
        std::vector<size_t> mb;
        while (mb.size() < std::min(bs, seqs.size())) {
          if (pos == order.size()) {
            order = permutation(seqs.size());
            pos = 0;
            ++pass;
          }
          mb.push_back(order[pos++]);
        }
        int64_t tok = 0;
        for (size_t i : mb) tok += static_cast<int64_t>(seqs[i].response.size());
        run_update(mb, {{"epoch", pass}, {"mini_batch", step}});
        progress.add(1, tok);
      }
      progress.finish();
    } else {
      for (int64_t e = 0; e < cfg.epochs; ++e) {
        const std::vector<size_t> order = e == 0 ? order0 : permutation(seqs.size());
        for (int64_t k = 0; k < n_mb; ++k) run_update(mini_batch(order, k), {{"epoch", e}, {"mini_batch", k}});
      }
    }
    const double t_upd = now_s() - t_upd0;

    // The whole-step mismatch/* and routing/* metrics over all sequences (weighted over ranks by tokens): after
    // the updates, which complete the old-pass values the old pass left to the first of them.
    algo::Metrics summary;
    double owned_tokens = 0;
    for (size_t i : owned) owned_tokens += static_cast<double>(seqs[i].response.size());
    double total_tokens_all = 0;
    for (const auto& s : seqs) total_tokens_all += static_cast<double>(s.response.size());
    if (!tc.sft) {
      bool roll = true, routes = true;
      for (const auto& s : seqs) {
        roll &= !s.logp_roll.empty();
        routes &= s.rollout_routing.defined();
      }
      algo::Metrics part;
      if (!owned.empty() && (roll || routes)) {
        std::vector<at::Tensor> lo, lr, ri, ni;
        int64_t R = 0;
        for (size_t i : owned) R = std::max<int64_t>(R, seqs[i].response.size());
        std::vector<at::Tensor> masks;
        for (size_t i : owned) {
          const int64_t r = seqs[i].response.size(), pad = R - r;
          masks.push_back(at::cat({at::ones({r}), at::zeros({pad})}));
          lo.push_back(at::cat({old[i].logp_old, at::zeros({pad})}));
          if (roll) lr.push_back(at::cat({at::tensor(seqs[i].logp_roll, at::kFloat), at::zeros({pad})}));
          if (routes) {
            at::Tensor rr = seqs[i].rollout_routing.narrow(0, seqs[i].prompt.size() - 1, r);
            ri.push_back(at::cat({rr, at::zeros({pad, rr.size(1), rr.size(2)}, at::kLong)}));
            ni.push_back(at::cat({old[i].native_idx, at::zeros({pad, rr.size(1), rr.size(2)}, at::kLong)}));
          }
        }
        at::Tensor m = at::stack(masks);
        if (roll) part = algo::mismatch_metrics(at::stack(lo), at::stack(lr), m);
        if (routes) {
          algo::Metrics ra = algo::routing_agreement(at::stack(ri), at::stack(ni), m);
          part.insert(ra.begin(), ra.end());
        }
      }
      if (comm) {
        std::vector<std::string> keys;
        if (roll) keys = {"mismatch/kl", "mismatch/k3_kl", "mismatch/extreme_frac", "mismatch/chi2_token"};
        if (routes) for (const char* k : {"routing/layer_mismatch", "routing/token_mismatch", "routing/layers_differing_mean"}) keys.push_back(k);
        if (!keys.empty()) {
          std::vector<double> v;
          for (auto& k : keys) v.push_back((part.count(k) ? part[k] : 0.0) * owned_tokens);
          std::vector<at::Tensor> t{at::tensor(v, at::kDouble).to(comm->device())};
          comm->all_reduce_sum(t);
          t[0] = t[0].cpu();
          for (size_t i = 0; i < keys.size(); ++i) part[keys[i]] = t[0][i].item<double>() / total_tokens_all;
        }
      }
      summary.insert(part.begin(), part.end());
    }

    // Outputs of the step, all staged: --routing-out and --metrics are written to temporaries first, the
    // checkpoint is staged and swapped in, then the temporaries are renamed into place. An error before the
    // swap leaves every output as it was; after it only renames remain.
    // --routing-out: the old pass's native routing, positions 0 .. P+R-2 as moe-rollout writes them.
    // Under data/expert parallel every rank's records travel to rank 0, a chunk of sequences at a time, and are
    // written in stream order: the stream is the one a single process writes.
    std::unique_ptr<io::Output> rout;
    if (!cfg.routing_out.empty()) {
      std::unique_ptr<format::RoutingWriter> w;
      if (rank == 0) {
        rout = std::make_unique<io::Output>(cfg.routing_out);
        format::RoutingMeta meta;
        meta.layer_ids = mc.moe_layer_ids();
        meta.num_layers = static_cast<int>(meta.layer_ids.size());
        meta.num_experts = static_cast<int>(mc.num_experts);
        meta.top_k = static_cast<int>(mc.num_experts_per_tok);
        meta.prob_dtype = "f32";
        meta.model_digest = model::config_digest(mc);
        format::Header h;
        h.producer = cfg.producer;
        h.meta["dtype"] = "f32";
        h.meta["source"] = "moe-train-step old pass (native routing)";
        w = std::make_unique<format::RoutingWriter>(*rout, h, meta);
      }
      auto record_of = [&](size_t i) {
        const OldPass& o = old[i];
        format::RoutingRecord rr;
        rr.id = seqs[i].id;
        rr.first_pos = 0;
        rr.n_pos = o.routing_idx.size(0);
        at::Tensor idx = o.routing_idx.contiguous();
        at::Tensor pr = o.routing_prob.contiguous();
        rr.experts.assign(idx.numel(), 0);
        const int64_t* ip = idx.data_ptr<int64_t>();
        for (size_t k = 0; k < rr.experts.size(); ++k) rr.experts[k] = static_cast<uint16_t>(ip[k]);
        rr.probs.assign(pr.data_ptr<float>(), pr.data_ptr<float>() + pr.numel());
        return rr;
      };
      const size_t chunk = 256;
      for (size_t first = 0; first < seqs.size(); first += chunk) {
        const size_t last = std::min(seqs.size(), first + chunk);
        std::vector<format::RoutingRecord> recs(last - first);
        std::vector<char> got(last - first, 0);  // under data parallel: a peer sent record i
        if (!comm) {
          for (size_t i = first; i < last; ++i) recs[i - first] = record_of(i);
        } else {
          // This rank's records of the chunk as (index, n_pos, values, experts as u16, probs as f32) rows.
          std::string mine;
          auto put = [&mine](const void* p, size_t n) { mine.append(static_cast<const char*>(p), n); };
          for (size_t i = first; i < last; ++i) {
            if (static_cast<int>(i % world) != rank) continue;
            format::RoutingRecord rr = record_of(i);
            const uint64_t head[3] = {i, static_cast<uint64_t>(rr.n_pos), rr.experts.size()};
            put(head, sizeof head);
            put(rr.experts.data(), rr.experts.size() * sizeof(uint16_t));
            put(rr.probs.data(), rr.probs.size() * sizeof(float));
          }
          std::vector<std::string> all = dist::gather_bytes(*comm, mine);
          for (const std::string& part : all) {
            size_t off = 0;
            auto get = [&](void* p, size_t n) {
              if (off + n > part.size()) throw Error("--routing-out: a truncated record from a peer");
              std::memcpy(p, part.data() + off, n);
              off += n;
            };
            while (off < part.size()) {
              uint64_t head[3];
              get(head, sizeof head);
              if (head[0] < first || head[0] >= last) throw Error("--routing-out: a peer sent a record of another chunk");
              if (head[2] > (part.size() - off) / (sizeof(uint16_t) + sizeof(float))) throw Error("--routing-out: a truncated record from a peer");
              got[head[0] - first] = 1;
              format::RoutingRecord& rr = recs[head[0] - first];
              rr.id = seqs[head[0]].id;
              rr.first_pos = 0;
              rr.n_pos = static_cast<int64_t>(head[1]);
              rr.experts.resize(head[2]);
              rr.probs.resize(head[2]);
              get(rr.experts.data(), head[2] * sizeof(uint16_t));
              get(rr.probs.data(), head[2] * sizeof(float));
            }
          }
        }
        if (w) {
          for (size_t i = first; i < last; ++i)
            if (comm && !got[i - first]) throw Error("--routing-out: no rank sent the routing of record " + std::to_string(seqs[i].id));
          for (auto& rr : recs) w->write(rr);
        }
      }
      if (w) {
        w->finish();
        rout->prepare();
      }
    }

    // Checkpoint (rank 0; under expert parallel each rank of the first expert group writes its own shards and
    // rank 0 swaps the dir in), then every rank learns that it was written.
    const double t_save0 = now_s();
    nlohmann::json st_extra = {{"seed", cfg.seed},
                               {"algo", tc.sft ? std::string("sft") : std::string(algo::to_string(tc.loss.algo))},
                               {"router", to_string(tc.router)},
                               {"world_size", world},
                               {"expert_parallel", shard.size},
                               {"train_steps", trainer.state().value("train_steps", 0) + 1 + unsaved}};
    nlohmann::json j;
    auto summarize = [&] {
      const double t_save = now_s() - t_save0;
      summary["loss"] = updates ? loss_sum / static_cast<double>(updates) : 0.0;
      summary["updates"] = static_cast<double>(updates);
      if (!tc.sft && algo::effective_agg(tc.loss) == algo::Agg::seq_mean_token_sum_norm) summary["loss_scale"] = tc.loss.loss_scale;
      summary["sequences"] = static_cast<double>(seqs.size());
      summary["tokens"] = trained_tokens;  // response tokens trained on, summed over updates (epochs, steps)
      summary["step"] = static_cast<double>(trainer.global_step());
      summary["time/old_pass"] = t_old;
      summary["time/updates"] = t_upd;
      summary["time/save"] = t_save;  // writing the checkpoint, up to its final fsync and swap
      summary["seconds"] = now_s() - t_start;
      if (t_upd + t_old > 0) summary["tokens_per_s"] = trained_tokens / (t_upd + t_old);
      j = metrics_json(summary);
      j["kind"] = "summary";
      j["algo"] = st_extra["algo"];
      j["router"] = st_extra["router"];
      j["world_size"] = world;
      j["output"] = out_dir;
      if (cfg.save_every > 1) j["saved"] = save;
    };
    if (!save) {
      // --follow --save-every: no checkpoint this step (one process: rank 0); the summary line still goes out.
      summarize();
      sink.line(j, false);
      sink.prepare();
      sink.commit();
      if (!cli::quiet()) std::fputs((j.dump() + "\n").c_str(), stderr);
      ++unsaved;
      unsaved_extra = st_extra;
      return summary;
    }
    unsaved = 0;
    if (rank == 0) {
      // Called with the new checkpoint fully written, before its swap: the last moment a failure still
      // leaves every output untouched.
      trainer.save(
          out_dir, extra, st_extra,
          [&] {
            summarize();
            sink.line(j, false);
            sink.prepare();
          },
          cfg.max_shard_bytes);
      if (rout) rout->commit();
      sink.commit();
      if (!cli::quiet()) std::fputs((j.dump() + "\n").c_str(), stderr);
    } else {
      // Expert parallel: every rank takes part in the save (the first expert group writes its shards).
      if (shard.size > 1) trainer.save(out_dir, {}, st_extra, nullptr, cfg.max_shard_bytes);
      summarize();
    }
    if (comm) comm->sum(1.0);
    return summary;
  };

  // --follow --save-every: the checkpoint of the last step, when it has not been written. Only between steps
  // (the end of the input, or an error reading the next stream): the model and optimizer then hold exactly
  // that step's result. An error inside a step leaves them half updated, so those steps are lost.
  auto save_unsaved = [&] {
    if (unsaved == 0) return;
    const double t0 = now_s();
    trainer.save(out_dir, extra, unsaved_extra, nullptr, cfg.max_shard_bytes);
    cli::info(out_dir + ": checkpoint of step " + std::to_string(trainer.global_step()) + " written (" +
              std::to_string(unsaved) + " stream(s) since the last one, " + std::to_string(now_s() - t0) + " s)");
    unsaved = 0;
  };

  algo::Metrics last;
  if (!cfg.follow) {
    last = one_step(true);
  } else {
    // The checkpoint of stream N is written before anything of stream N + 1 is read: in an RL loop the
    // rollouts of the next stream may need it. With --save-every N, that holds for every Nth stream.
    for (;;) {
      try {
        last = one_step(stream_no % cfg.save_every == 0);
      } catch (const Error& e) {
        throw in_stream(e);
      }
      ++stream_no;
      t_start = now_s();
      seqs.clear();
      try {
        if (!follow->next_stream()) {
          // Every routing stream belongs to a rollout stream: one more means the two inputs were not made together.
          if (follow_routing && follow_routing->next_stream())
            throw Error(follow_routing->name() + ": holds more routing streams than the input holds rollout streams (" +
                        std::to_string(stream_no - 1) + ")");
          break;
        }
        read_next();
      } catch (const Error& e) {
        const Error err = in_stream(e);
        try {
          save_unsaved();
        } catch (const std::exception& se) {
          cli::warn(std::string("the checkpoint of the steps before this error was not written: ") + se.what());
        }
        throw err;
      }
      trainer.set_temperature(tc.temperature);
      trainer.set_loss_scale(tc.loss.loss_scale);
      at::manual_seed(cfg.seed);  // as a fresh process would: every step the same function of its inputs
    }
    save_unsaved();
  }
  if (comm) {
    const double t0 = now_s();
    comm.reset();
    cli::debug("process group closed in " + std::to_string(now_s() - t0) + " s");
  }
  return last;
}

}  // namespace moe::train
