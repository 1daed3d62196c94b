// moe-train-step: one RL train step (old-policy pass + mini-batch updates) or SFT on a model dir.
// Parses options into a moe::train::StepConfig; everything else is lib/train.
#include <CLI/CLI.hpp>

#include <optional>

#include "moe/cli/app.h"
#include "moe/format/stream.h"
#include "moe/io/error.h"
#include "moe/model/checkpoint_files.h"
#include "moe/train/step.h"

namespace {

std::pair<double, double> parse_range(const std::string& s, const char* opt) {
  const auto comma = s.find(',');
  try {
    if (comma == std::string::npos) throw std::invalid_argument(s);
    size_t a = 0, b = 0;
    double lo = std::stod(s.substr(0, comma), &a), hi = std::stod(s.substr(comma + 1), &b);
    if (a != comma || b != s.size() - comma - 1) throw std::invalid_argument(s);
    if (!(lo >= 0 && lo <= hi)) throw moe::UsageError(std::string(opt) + " needs 0 <= LO <= HI, got " + s);
    return {lo, hi};
  } catch (const std::invalid_argument&) {
    throw moe::UsageError(std::string(opt) + " expects LO,HI (e.g. 0.5,2), got '" + s + "'");
  } catch (const std::out_of_range&) {
    throw moe::UsageError(std::string(opt) + " expects LO,HI (e.g. 0.5,2), got '" + s + "'");
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string max_shard;
  moe::cli::Common common;
  moe::train::StepConfig cfg;
  auto& loss = cfg.train.loss;
  auto& opt = cfg.train.optim;
  std::string algo = "grpo", router = "free", loss_agg, tis, mis, rs_form = "paper", rs_layer_agg = "geomean",
              rs_apply = "after-clip";
  std::optional<double> eps_low, eps_high, lr;
  bool no_shuffle = false;
  moe::cli::DistOptions dist;
  return moe::cli::run_tool(
      "moe-train-step", argc, argv,
      [&](CLI::App& app) {
        app.description(
            "One RL train step on a model dir: old-policy pass, then K mini-batch AdamW updates per epoch on a "
            "rewarded rollout stream (or SFT on a rollout stream or prompt+solution JSONL). Writes the updated "
            "model and optimizer state atomically.");
        moe::cli::add_model(app, common);
        app.add_option("rollouts", cfg.input, "rewarded rollout stream, or (sft) prompt+solution JSONL ('-' = stdin)")
            ->capture_default_str();
        app.add_option("-o,--output", cfg.output_dir, "write the updated model dir here (default: replace -m DIR in place)");
        app.add_option("--max-shard-size", max_shard, "weights larger than this are written as shards + index (e.g. 500MB; default 5GB)");
        app.add_option("--algo", algo, "grpo, dapo, drgrpo, gspo, gmpo, rspo or sft")->capture_default_str();
        app.add_option("--routing", cfg.routing, "the rollout's routing stream (joined by id)");
        app.add_option("--router", router, "free, freeze, replay-old (R2), replay-rollout (R3), copy-old-logits")
            ->capture_default_str();
        app.add_option("--routing-out", cfg.routing_out, "write the training old pass's native routing stream here");
        app.add_option("--mini-batches", cfg.mini_batches, "updates per epoch (K)")->capture_default_str();
        app.add_option("--epochs", cfg.epochs, "passes over the rollouts (E)")->capture_default_str();
        app.add_flag("--no-shuffle", no_shuffle, "keep stream order when splitting into mini-batches");
        app.add_option("--micro-batch", cfg.train.micro_batch, "sequences per forward of the old pass")->capture_default_str();
        app.add_option("--lr", lr, "peak learning rate (default 1e-4; sft 1e-3)");
        app.add_option("--weight-decay", opt.weight_decay, "AdamW decoupled weight decay")->capture_default_str();
        app.add_option("--beta1", opt.beta1, "AdamW beta1")->capture_default_str();
        app.add_option("--beta2", opt.beta2, "AdamW beta2")->capture_default_str();
        app.add_option("--adam-eps", opt.eps, "AdamW epsilon")->capture_default_str();
        app.add_option("--grad-clip", opt.grad_clip, "max global gradient L2 norm (<= 0: no clipping)")->capture_default_str();
        app.add_option("--warmup", opt.warmup, "linear lr warmup over this many optimizer steps (global counter), then constant")
            ->capture_default_str();
        app.add_option("--metrics", cfg.metrics_path, "append one JSON line per update and a summary line to FILE");
        app.add_flag("--follow", cfg.follow,
                     "the input holds rollout streams one after another (e.g. a pipe): one step and one checkpoint "
                     "per stream, without reloading the model or rebuilding the optimizer; --routing then holds one "
                     "routing stream per rollout stream, read after it");
        app.add_option("--save-every", cfg.save_every,
                       "with --follow: write the checkpoint after every Nth stream (and after the last, and before an "
                       "input error ends the run) instead of after each; the rollouts in between keep older weights")
            ->capture_default_str();
        app.add_flag("--wait", cfg.wait_lock, "wait for another moe-train-step holding the model dir's lock (default: fail at once)");
        // Loss options (algorithms.md; man/moe-train-step.1).
        app.add_option("--clip-low,--eps-low", eps_low, "lower clip range (default per --algo)");
        app.add_option("--clip-high,--eps-high", eps_high, "upper clip range (default per --algo)");
        app.add_option("--dual-clip", loss.dual_clip, "dual-clip constant c for A < 0 (<= 1: off)")->capture_default_str();
        app.add_option("--loss-agg", loss_agg, "token-mean, seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm");
        app.add_option("--loss-scale", loss.loss_scale, "C of seq-mean-token-sum-norm, a constant (0: the rollout header's max_new_tokens)")
            ->capture_default_str();
        app.add_flag("--router-shift", loss.router_shift, "router-shift ratio on grpo/dapo/drgrpo/gspo/gmpo (always on for rspo)");
        app.add_option("--rs-floor", loss.rs.floor, "router-shift floor gamma_min")->capture_default_str();
        app.add_option("--rs-form", rs_form, "paper or mean-exp")->capture_default_str();
        app.add_option("--rs-layer-agg", rs_layer_agg, "mean, product or geomean (mean-exp form)")->capture_default_str();
        app.add_option("--rs-apply", rs_apply, "after-clip (the paper) or pre-clip (ablation)")->capture_default_str();
        app.add_flag("--rs-grad", loss.rs.grad, "ablation: no stop-gradient through the router-shift factor");
        app.add_option("--rs-mask", loss.rs.mask_below, "drop tokens with raw gamma below T (0: off)")->capture_default_str();
        app.add_option("--tis", tis, "truncated importance sampling: token or seq");
        app.add_option("--tis-cap", loss.is.cap, "TIS truncation C")->capture_default_str();
        app.add_option("--mis", mis, "LO,HI: masked importance sampling range of rho");
        app.add_option("--kl-coef", loss.kl_coef, "k3 KL to --ref (0: off)")->capture_default_str();
        app.add_option("--ref", cfg.ref_dir, "reference model dir for --kl-coef");
        app.add_option("--entropy-coef", loss.entropy_coef, "entropy bonus coefficient")->capture_default_str();
        app.add_option("--aux-coef", loss.aux_coef, "Switch load-balancing loss coefficient")->capture_default_str();
        // SFT.
        app.add_option("--steps", cfg.sft_steps, "sft: optimizer steps in this run (0: one pass in --mini-batches)")
            ->capture_default_str();
        app.add_option("--batch-size", cfg.sft_batch_size, "sft: examples per step with --steps (default 32)");
        app.add_option("--prompt-key", cfg.prompt_key, "sft JSONL: prompt key")->capture_default_str();
        app.add_option("--solution-key", cfg.solution_key, "sft JSONL: answer key (trained as solution + eos)")
            ->capture_default_str();
        // Data parallel and expert parallel.
        moe::cli::add_dist(app, dist);
        app.add_flag("--checkpoint-activations", cfg.train.checkpoint_activations,
                     "recompute each decoder layer in the backward pass instead of keeping its activations");
        app.add_option("--dtype", cfg.dtype, "compute dtype: f32, or bf16 (float32 master weights and Adam states)")
            ->capture_default_str();
        moe::cli::add_seed(app, common);
        moe::cli::add_threads(app, common);
        moe::cli::add_device(app, common);
        moe::cli::add_quiet_verbose(app, common);
      },
      [&]() -> int {
        moe::cli::set_verbosity(common.verbose, common.quiet);
        cfg.model_dir = common.model;
        cfg.seed = common.seed;
        if (!max_shard.empty()) cfg.max_shard_bytes = moe::model::parse_size(max_shard);
        cfg.threads = common.threads;
        cfg.device = common.device;
        cfg.shuffle = !no_shuffle;
        cfg.producer = moe::format::make_producer("moe-train-step", argc, argv);
        cfg.train.router = moe::train::parse_router_control(router);
        if (algo == "sft") {
          cfg.train.sft = true;
          opt.lr = lr.value_or(1e-3);
        } else {
          loss.algo = moe::algo::parse_algo(algo);
          opt.lr = lr.value_or(1e-4);
        }
        loss.eps_low = eps_low;
        loss.eps_high = eps_high;
        if (!loss_agg.empty()) loss.loss_agg = moe::algo::parse_agg(loss_agg);
        loss.rs.form = moe::algo::parse_rs_form(rs_form);
        loss.rs.layer_agg = moe::algo::parse_rs_layer_agg(rs_layer_agg);
        loss.rs.apply = moe::algo::parse_rs_apply(rs_apply);
        if (!tis.empty()) loss.is.level = moe::algo::parse_is_level(tis);
        if (!mis.empty()) loss.is.mis = parse_range(mis, "--mis");
        cfg.dist = moe::dist::dist_config(dist);
        moe::train::run_train_step(cfg);
        return 0;
      });
}
