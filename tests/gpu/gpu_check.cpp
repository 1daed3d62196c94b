// GPU checks for tests/gpu/run.sh (built in every build; needs a CUDA build of libtorch and a GPU to do
// more than say that there is none).
//   gpu_check devices                 prints the number of CUDA devices
//   gpu_check parity FIXTURE [DEV]    the model on the CPU and on DEV (default cuda:0), fp32, both against the
//                                     transformers reference of the fixture (tests/fixtures/qwen3moe-tiny/*):
//                                     logits max abs diff, router logits, and the top-k experts per position
//   gpu_check sampling [DEV]          the sampler on the CPU and on DEV from the same logits (64 x 151936):
//                                     the untruncated draw's tensor-operation rule on DEV picks the CPU loop's
//                                     tokens; greedy, top-k and top-p tokens and log-probs agree
// Exit 0 when the checks pass, 1 when one fails, 2 on usage errors; prints one line per figure.
#include <ATen/ATen.h>
#include <torch/cuda.h>

#include <cstdio>
#include <string>

#include "moe/model/qwen3_moe.h"
#include "moe/model/safetensors.h"
#include "moe/rollout/sampling.h"

using namespace moe::model;

namespace {

struct Result {
  double logits = 0, router_logits = 0;
  bool routing_equal = false;
};

Result compare(const std::string& dir, const c10::Device& dev) {
  Qwen3Moe m = load_model(dir, dev, at::kFloat);
  SafetensorsFile ref(dir + "/reference.safetensors");
  at::Tensor ids = ref.get("input_ids"), mask = ref.get("attention_mask");
  ForwardOptions opt;
  opt.capture_routing = true;
  opt.return_router_logits = true;
  at::NoGradGuard ng;
  ForwardOutput out = m->forward(ids.to(dev), mask.to(dev), RoutingPlan::native(), opt);
  at::Tensor valid = mask.to(at::kBool);
  at::Tensor v4 = valid.view({valid.size(0), valid.size(1), 1, 1});
  Result r;
  r.logits = (out.logits.cpu() - ref.get("logits")).abs().amax(-1).masked_select(valid).max().item<double>();
  r.router_logits = (out.router_logits.cpu() - ref.get("router_logits")).abs().masked_select(v4).max().item<double>();
  at::Tensor ours = std::get<0>(out.routing_indices.cpu().sort(-1)), theirs = std::get<0>(ref.get("router_topk").sort(-1));
  r.routing_equal = at::equal(ours.masked_select(v4), theirs.masked_select(v4));
  return r;
}

// The sampler on the CPU and on `dev` from the same logits. Returns the number of failed checks.
int sampling(const c10::Device& dev) {
  using namespace moe::rollout;
  at::manual_seed(3);
  const int64_t B = 64, V = 151936;
  at::Tensor logits = at::randn({B, V}) * 3;
  std::vector<double> u;
  for (int64_t b = 0; b < B; ++b) u.push_back(stream_uniform(7, b, 0));
  int failed = 0;
  // The untruncated rule itself, from the same log-probs: the CPU loop against tensor operations on dev.
  at::Tensor logp = at::log_softmax(logits / 0.7, -1);
  at::Tensor loop = moe::rollout::detail::sample_untruncated(logp, u, false);
  at::Tensor ops = moe::rollout::detail::sample_untruncated(logp.to(dev), u, true).cpu();
  const int64_t same = loop.eq(ops).sum().item<int64_t>();
  std::printf("sampling: untruncated draw, CPU loop vs tensor operations on %s: %lld of %lld rows pick the same token\n",
              dev.str().c_str(), static_cast<long long>(same), static_cast<long long>(B));
  failed += same != B;
  // sample_next end to end (log-softmax on each device: a row may differ only at a rounding boundary).
  for (int mode = 0; mode < 4; ++mode) {
    SamplingParams p;
    p.temperature = 0.7;
    p.greedy = mode == 0;
    p.top_k = mode == 2 ? 20 : 0;
    p.top_p = mode == 3 ? 0.9 : 1.0;
    const char* name[] = {"greedy", "untruncated", "top-k 20", "top-p 0.9"};
    Sampled c = sample_next(logits, p, u), g = sample_next(logits.to(dev), p, u);
    const int64_t agree = c.tokens.eq(g.tokens.cpu()).sum().item<int64_t>();
    const double lp = (c.logprobs - g.logprobs.cpu()).abs().max().item<double>();
    std::printf("sampling: %s on cpu and %s: %lld of %lld tokens equal, log-prob max abs diff %.3g\n", name[mode],
                dev.str().c_str(), static_cast<long long>(agree), static_cast<long long>(B), lp);
    failed += agree < B - 1;
    if (agree == B) failed += lp > 1e-4;
  }
  return failed;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  try {
    if (cmd == "devices") {
      std::printf("%lld\n", static_cast<long long>(torch::cuda::device_count()));  // size_t in libtorch 1.13, int in 2.x
      return 0;
    }
    if (cmd == "parity" && argc >= 3) {
      const std::string dir = argv[2];
      const c10::Device dev(argc > 3 ? argv[3] : "cuda:0");
      // Full fp32 matmuls on the GPU: TF32 would be a 1e-3 difference of its own.
      at::globalContext().setAllowTF32CuBLAS(false);
      Result cpu = compare(dir, at::kCPU), gpu = compare(dir, dev);
      std::printf("%s: logits max abs diff to transformers: cpu %.3g, %s %.3g\n", dir.c_str(), cpu.logits, dev.str().c_str(), gpu.logits);
      std::printf("%s: router logits max abs diff: cpu %.3g, %s %.3g\n", dir.c_str(), cpu.router_logits, dev.str().c_str(), gpu.router_logits);
      std::printf("%s: top-k experts equal to transformers': cpu %s, %s %s\n", dir.c_str(), cpu.routing_equal ? "yes" : "no",
                  dev.str().c_str(), gpu.routing_equal ? "yes" : "no");
      const bool ok = cpu.logits <= 1e-4 && gpu.logits <= 1e-4 && cpu.router_logits <= 1e-4 && gpu.router_logits <= 1e-4 &&
                      cpu.routing_equal && gpu.routing_equal;
      return ok ? 0 : 1;
    }
    if (cmd == "sampling") return sampling(c10::Device(argc > 2 ? argv[2] : "cuda:0")) ? 1 : 0;
  } catch (const std::exception& e) {
    std::string msg = e.what();
    std::fprintf(stderr, "gpu_check: %s\n", msg.substr(0, msg.find('\n')).c_str());
    return 1;
  }
  std::fprintf(stderr, "usage: gpu_check devices | gpu_check parity FIXTURE_DIR [DEVICE] | gpu_check sampling [DEVICE]\n");
  return 2;
}
