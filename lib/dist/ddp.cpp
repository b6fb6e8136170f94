#include "dist/ddp.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>

#include "core/error.h"

namespace dsk::dist {

// ---------------------------------------------------------------------------------------------
// GradSync

struct GradSync::State {
  struct Bucket {
    std::vector<size_t> params;  // indices into State::params
    std::vector<int64_t> offsets;
    at::Tensor buffer;           // flat, the bucket's dtype
    int owner = -1;              // ZeRO-1: the rank the bucket is reduced into; -1: all-reduce
    int pending = 0;             // gradients not yet ready in this sync step
    bool launched = false;
    Comm::Handle handle;
  };

  explicit State(Comm& c) : comm(c) {}
  Comm& comm;
  std::vector<at::Tensor> params;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;  // keeps the hooked nodes alive
  std::vector<Bucket> buckets;
  std::vector<size_t> bucket_of;
  std::vector<char> ready;
  std::mutex mu;
  bool sync = false;
  size_t next = 0;  // buckets [0, next) are launched

  void launch(Bucket& b) {
    for (size_t k = 0; k < b.params.size(); ++k) {
      const at::Tensor& p = params[b.params[k]];
      at::Tensor slice = b.buffer.narrow(0, b.offsets[k], p.numel());
      const at::Tensor& g = p.grad();
      if (g.defined())
        slice.copy_(g.reshape(-1));
      else
        slice.zero_();
    }
    b.handle = b.owner < 0 ? comm.allreduce_sum_async(b.buffer) : comm.reduce_sum_async(b.buffer, b.owner);
    b.launched = true;
  }

  // Launches buckets in index order while the next one is complete.
  void launch_ready() {
    while (next < buckets.size() && buckets[next].pending == 0) launch(buckets[next++]);
  }

  void on_ready(size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    if (!sync) return;
    if (ready[i])
      fail("data parallel: parameter #{} received its gradient twice in one backward pass (a weight used in two "
           "separate backward calls cannot be synchronized bucket-wise)",
           i);
    ready[i] = 1;
    --buckets[bucket_of[i]].pending;
    launch_ready();
  }
};

namespace {

struct ReadyHook : torch::autograd::FunctionPostHook {
  ReadyHook(std::weak_ptr<GradSync::State> s, size_t i) : st(std::move(s)), index(i) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& /*inputs*/) override {
    if (auto s = st.lock()) s->on_ready(index);
    return outputs;
  }
  std::weak_ptr<GradSync::State> st;
  size_t index;
};

}  // namespace

GradSync::GradSync(Comm& comm, std::vector<at::Tensor> params, int64_t bucket_bytes, std::vector<int> owner)
    : st_(std::make_shared<State>(comm)) {
  State& s = *st_;
  s.params = std::move(params);
  DSK_CHECK(owner.empty() || owner.size() == s.params.size(), "GradSync: {} owners for {} parameters", owner.size(),
            s.params.size());
  s.bucket_of.assign(s.params.size(), 0);
  s.ready.assign(s.params.size(), 0);
  // Reverse order: the first buckets hold the parameters whose gradients come first. One open
  // bucket per owner (a single one without owners); a bucket is numbered when it opens, so the
  // numbering, and with it the launch order, is the same on every rank.
  struct Open {
    size_t index = 0;
    int64_t bytes = 0;
    bool live = false;
  };
  std::vector<Open> open(owner.empty() ? 1 : static_cast<size_t>(comm.size()));
  for (size_t j = s.params.size(); j-- > 0;) {
    const at::Tensor& p = s.params[j];
    DSK_CHECK(p.requires_grad() && p.is_leaf(), "data parallel: parameter #{} is not a trainable leaf", j);
    const int who = owner.empty() ? -1 : owner[j];
    DSK_CHECK(who < comm.size(), "GradSync: parameter #{} owned by rank {} of {}", j, who, comm.size());
    Open& o = open[static_cast<size_t>(std::max(who, 0))];
    const int64_t bytes = p.numel() * static_cast<int64_t>(p.element_size());
    if (o.live) {
      const State::Bucket& b = s.buckets[o.index];
      const at::Tensor& first = s.params[b.params[0]];
      if (p.scalar_type() != first.scalar_type() || p.device() != first.device() || o.bytes + bytes > bucket_bytes)
        o.live = false;
    }
    if (!o.live) {
      o = Open{s.buckets.size(), 0, true};
      s.buckets.emplace_back();
      s.buckets.back().owner = who;
    }
    State::Bucket& b = s.buckets[o.index];
    b.offsets.push_back(o.bytes / static_cast<int64_t>(p.element_size()));
    b.params.push_back(j);
    s.bucket_of[j] = o.index;
    o.bytes += bytes;
  }
  for (auto& b : s.buckets) {
    const at::Tensor& first = s.params[b.params[0]];
    int64_t n = 0;
    for (size_t k : b.params) n += s.params[k].numel();
    b.buffer = at::empty({n}, first.options().requires_grad(false));
  }
  for (size_t i = 0; i < s.params.size(); ++i) {
    auto acc = torch::autograd::impl::grad_accumulator(s.params[i]);
    DSK_CHECK(acc != nullptr, "data parallel: parameter #{} has no gradient accumulator", i);
    acc->add_post_hook(std::make_unique<ReadyHook>(st_, i));
    s.accumulators.push_back(std::move(acc));
  }
}

GradSync::~GradSync() = default;

int64_t GradSync::buckets() const { return static_cast<int64_t>(st_->buckets.size()); }

void GradSync::begin(bool sync) {
  std::lock_guard<std::mutex> lock(st_->mu);
  State& s = *st_;
  if (sync && !s.sync) {
    std::fill(s.ready.begin(), s.ready.end(), 0);
    for (auto& b : s.buckets) b.pending = static_cast<int>(b.params.size()), b.launched = false;
    s.next = 0;
  }
  s.sync = sync;
}

void GradSync::finish() {
  State& s = *st_;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    DSK_CHECK(s.sync, "GradSync::finish without begin(true)");
    while (s.next < s.buckets.size()) s.launch(s.buckets[s.next++]);
    s.sync = false;
  }
  at::NoGradGuard no_grad;
  for (auto& b : s.buckets) {
    b.handle.wait();
    for (size_t k = 0; k < b.params.size(); ++k) {
      at::Tensor& p = s.params[b.params[k]];
      if (b.owner >= 0 && b.owner != s.comm.rank()) {  // another rank's: its sum lives there
        p.mutable_grad().reset();
        continue;
      }
      at::Tensor sum = b.buffer.narrow(0, b.offsets[k], p.numel()).view(p.sizes());
      if (p.grad().defined())
        p.mutable_grad().copy_(sum);
      else
        p.mutable_grad() = sum.clone();
    }
  }
}

// ---------------------------------------------------------------------------------------------

void broadcast_tensors(Comm& comm, const std::vector<at::Tensor>& tensors, int src, int64_t chunk_bytes) {
  if (comm.size() == 1 || tensors.empty()) return;
  at::NoGradGuard no_grad;
  size_t i = 0;
  while (i < tensors.size()) {
    size_t j = i;
    int64_t bytes = 0;
    std::vector<at::Tensor> flat;
    while (j < tensors.size() && tensors[j].scalar_type() == tensors[i].scalar_type() &&
           (j == i || bytes + tensors[j].nbytes() <= static_cast<size_t>(chunk_bytes))) {
      bytes += static_cast<int64_t>(tensors[j].nbytes());
      flat.push_back(tensors[j].detach().reshape(-1));
      ++j;
    }
    at::Tensor buf = at::cat(flat);
    comm.broadcast(buf, src);
    if (comm.rank() != src) {
      int64_t off = 0;
      for (size_t k = i; k < j; ++k) {
        at::Tensor t = tensors[k];
        t.detach().copy_(buf.narrow(0, off, t.numel()).view(t.sizes()));
        off += t.numel();
      }
    }
    i = j;
  }
}

std::vector<int> partition_params(const std::vector<int64_t>& numels, int world_size) {
  std::vector<size_t> order(numels.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return numels[a] > numels[b]; });
  std::vector<int64_t> load(static_cast<size_t>(std::max(world_size, 1)), 0);
  std::vector<int> owner(numels.size(), 0);
  for (size_t i : order) {
    int r = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = r;
    load[static_cast<size_t>(r)] += numels[i];
  }
  return owner;
}

NamedTensors gather_named(Comm& comm, const NamedTensors& local) {
  if (comm.size() == 1) return local;
  auto contiguous = [](const at::Tensor& t) { return t.detach().contiguous(); };
  if (comm.rank() != 0) {
    nlohmann::json meta = nlohmann::json::array();
    for (const auto& [name, t] : local)
      meta.push_back({{"name", name}, {"dtype", static_cast<int>(t.scalar_type())}, {"shape", t.sizes().vec()}});
    std::string text = meta.dump();
    at::Tensor len = at::tensor({static_cast<int64_t>(text.size())}, at::kLong);
    comm.send(len, 0);
    at::Tensor bytes = at::empty({static_cast<int64_t>(text.size())}, at::kByte);
    std::memcpy(bytes.data_ptr(), text.data(), text.size());
    comm.send(bytes, 0);
    for (const auto& [name, t] : local)
      if (t.numel() > 0) comm.send(contiguous(t), 0);
    return {};
  }
  NamedTensors out;
  for (const auto& [name, t] : local) out.emplace_back(name, contiguous(t));
  for (int r = 1; r < comm.size(); ++r) {
    at::Tensor len = at::zeros({1}, at::kLong);
    comm.recv(len, r);
    at::Tensor bytes = at::empty({len.item<int64_t>()}, at::kByte);
    comm.recv(bytes, r);
    auto meta = nlohmann::json::parse(std::string(static_cast<const char*>(bytes.data_ptr()), bytes.numel()));
    for (const auto& m : meta) {
      at::Tensor t = at::empty(m.at("shape").get<std::vector<int64_t>>(),
                               at::TensorOptions().dtype(static_cast<at::ScalarType>(m.at("dtype").get<int>())));
      if (t.numel() > 0) comm.recv(t, r);
      out.emplace_back(m.at("name").get<std::string>(), t);
    }
  }
  return out;
}

}  // namespace dsk::dist
