// simt.cc - the fiber scheduler behind tests/simt/simt.h (see there).
//
// A block is n fibers on their own stacks, run round-robin by the calling
// thread: a fiber runs until it waits (barrier or warp rendezvous) or ends.
// On x86-64 a fiber switch is a few instructions (simt_switch below: the
// callee-saved registers and the FP control words, no system call); elsewhere
// ucontext, whose swapcontext also saves the signal mask (a system call each).
// When no fiber can run: if every live fiber waits at the barrier, all are
// released; otherwise the block is stuck, which aborts with its state.
#include "tests/simt/simt.h"

#include <cstdio>
#include <cstdlib>
#include <sys/mman.h>
#include <ucontext.h>
#include <vector>

#if defined(__x86_64__)
#define SIMT_FAST_SWITCH 1
// Save the callee-saved registers, MXCSR and the x87 control word on this
// stack, store its pointer in *from, and resume the stack at to.
extern "C" void simt_switch(void **from, void *to);
asm(".text\n"
    ".globl simt_switch\n"
    ".type simt_switch,@function\n"
    "simt_switch:\n"
    "\tpushq %rbp\n\tpushq %rbx\n\tpushq %r12\n\tpushq %r13\n\tpushq %r14\n\tpushq %r15\n"
    "\tsubq $8, %rsp\n\tstmxcsr (%rsp)\n\tfnstcw 4(%rsp)\n"
    "\tmovq %rsp, (%rdi)\n"
    "\tmovq %rsi, %rsp\n"
    "\tldmxcsr (%rsp)\n\tfldcw 4(%rsp)\n\taddq $8, %rsp\n"
    "\tpopq %r15\n\tpopq %r14\n\tpopq %r13\n\tpopq %r12\n\tpopq %rbx\n\tpopq %rbp\n"
    "\tret\n"
    ".size simt_switch, .-simt_switch\n"
    ".section .note.GNU-stack,\"\",@progbits\n"
    ".text\n");
#else
#define SIMT_FAST_SWITCH 0
#endif

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define SIMT_ASAN 1
#else
#define SIMT_ASAN 0
#endif

thread_local uint3 threadIdx, blockIdx;
thread_local dim3 blockDim, gridDim;

static thread_local cudaError_t last_error = cudaSuccess;

cudaError_t cudaGetLastError(void)
{
	cudaError_t e = last_error;
	last_error = cudaSuccess;
	return e;
}

cudaError_t cudaPeekAtLastError(void) { return last_error; }

const char *cudaGetErrorString(cudaError_t e)
{
	switch (e) {
	case cudaSuccess: return "no error";
	case cudaErrorInvalidValue: return "invalid argument";
	case cudaErrorMemoryAllocation: return "out of memory";
	case cudaErrorInvalidConfiguration: return "invalid configuration argument";
	case cudaErrorLaunchFailure: return "unspecified launch failure";
	}
	return "unknown error";
}

namespace simt {

namespace {

constexpr size_t kStack = 256 << 10;   // per fiber; kernels keep small register tiles on it
constexpr unsigned kMaxThreads = 1024;
constexpr size_t kMaxShared = 227 << 10;   // sm_90's opt-in maximum per block

enum State { RUN, AT_BARRIER, AT_WARP, DONE };

struct Fiber {
	ucontext_t ctx;                 // without the fast switch
	void *sp = nullptr;             // with it: the saved stack pointer
	void *stack = nullptr;
	State state = RUN;
	uint3 tid;
	void *fake = nullptr;           // ASan's fake stack while switched away
};

struct Warp {
	unsigned exist = 0;             // lanes the block has
	unsigned arrived = 0;
	unsigned mask = 0;
	warp_op op = W_SYNC;
	int width = 32;
	uint64_t in[32], out[32];
	int arg[32];
};

struct Block {
	std::vector<Fiber> f;
	std::vector<Warp> w;
	unsigned n = 0;
	unsigned cur = 0;
	ucontext_t sched;
	void *sched_sp = nullptr;
	void (*body)(void *) = nullptr;
	void *arg = nullptr;
	const void *sched_bottom = nullptr;   // the scheduler's stack, for ASan
	size_t sched_size = 0;
	void *sched_fake = nullptr;
};

thread_local Block *cur_block;
thread_local std::vector<void *> stacks;      // reused across launches
thread_local std::vector<unsigned char> smem;
thread_local int order_mode;
thread_local stats st;

void die(const char *what)
{
	fprintf(stderr, "simt: %s (block %u,%u,%u thread %u,%u,%u)\n", what, blockIdx.x, blockIdx.y, blockIdx.z,
		threadIdx.x, threadIdx.y, threadIdx.z);
	abort();
}

void *stack_at(size_t i)
{
	while (stacks.size() <= i) {
		void *p = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			       -1, 0);
		if (p == MAP_FAILED) {
			fprintf(stderr, "simt: cannot map a fiber stack\n");
			abort();
		}
		stacks.push_back(p);
	}
	return stacks[i];
}

// Fiber -> scheduler.
void yield()
{
	Block *b = cur_block;
	Fiber &me = b->f[b->cur];

	st.switches++;
#if SIMT_ASAN
	__sanitizer_start_switch_fiber(&me.fake, b->sched_bottom, b->sched_size);
#endif
#if SIMT_FAST_SWITCH
	simt_switch(&me.sp, b->sched_sp);
#else
	swapcontext(&me.ctx, &b->sched);
#endif
#if SIMT_ASAN
	__sanitizer_finish_switch_fiber(me.fake, nullptr, nullptr);
#endif
}

// Never returns, so under ASan its frame would stay poisoned on the reused
// stack: it gets no redzones (every frame below it returns normally).
__attribute__((no_sanitize_address)) void fiber_main()
{
	Block *b = cur_block;

#if SIMT_ASAN
	__sanitizer_finish_switch_fiber(nullptr, &b->sched_bottom, &b->sched_size);
#endif
	b->body(b->arg);
	b = cur_block;
	b->f[b->cur].state = DONE;
#if SIMT_ASAN
	__sanitizer_start_switch_fiber(nullptr, b->sched_bottom, b->sched_size);
#endif
#if SIMT_FAST_SWITCH
	void *dead;
	simt_switch(&dead, b->sched_sp);
#else
	setcontext(&b->sched);
#endif
	abort();   // never resumed
}

void switch_to(Block *b, unsigned i)
{
	Fiber &f = b->f[i];

	b->cur = i;
	threadIdx = f.tid;
#if SIMT_ASAN
	__sanitizer_start_switch_fiber(&b->sched_fake, f.stack, kStack);
#endif
#if SIMT_FAST_SWITCH
	simt_switch(&b->sched_sp, f.sp);
#else
	swapcontext(&b->sched, &f.ctx);
#endif
#if SIMT_ASAN
	__sanitizer_finish_switch_fiber(b->sched_fake, nullptr, nullptr);
#endif
}

void stuck(Block *b)
{
	fprintf(stderr, "simt: deadlock in block %u,%u,%u:\n", blockIdx.x, blockIdx.y, blockIdx.z);
	for (unsigned i = 0; i < b->n; i++) {
		static const char *name[] = {"running", "at __syncthreads", "at a warp operation", "returned"};
		fprintf(stderr, "  thread %u: %s\n", i, name[b->f[i].state]);
	}
	abort();
}

void run_block(Block *b, bool reverse)
{
	for (unsigned i = 0; i < b->n; i++) {
		Fiber &f = b->f[i];

		f.state = RUN;
		f.stack = stack_at(i);
#if SIMT_FAST_SWITCH
		/* What simt_switch pops, top down: a fake return address for fiber_main (so
		 * it starts with the stack aligned as after a call), fiber_main for ret,
		 * six registers, then MXCSR and the x87 control word. */
		uint64_t *top = (uint64_t *)((char *)f.stack + kStack);
		top[-1] = 0;
		top[-2] = (uint64_t)(uintptr_t)&fiber_main;
		for (int r = 3; r <= 8; r++)
			top[-r] = 0;
		top[-9] = 0x1f80u | (uint64_t)0x037fu << 32;
		f.sp = &top[-9];
#else
		getcontext(&f.ctx);
		f.ctx.uc_stack.ss_sp = f.stack;
		f.ctx.uc_stack.ss_size = kStack;
		f.ctx.uc_link = &b->sched;
		makecontext(&f.ctx, fiber_main, 0);
#endif
	}
	for (Warp &w : b->w)
		w.arrived = 0;
	for (;;) {
		bool ran = false, live = false, warp_wait = false;

		for (unsigned k = 0; k < b->n; k++) {
			unsigned i = reverse ? b->n - 1 - k : k;
			if (b->f[i].state == RUN) {
				switch_to(b, i);
				ran = true;
			}
		}
		if (ran)
			continue;
		for (unsigned i = 0; i < b->n; i++) {
			live |= b->f[i].state != DONE;
			warp_wait |= b->f[i].state == AT_WARP;
		}
		if (!live)
			break;
		if (warp_wait)
			stuck(b);
		st.barriers++;
		for (unsigned i = 0; i < b->n; i++)
			if (b->f[i].state == AT_BARRIER)
				b->f[i].state = RUN;
	}
}

uint64_t lane_result(const Warp &w, unsigned lane)
{
	const unsigned width = (unsigned)w.width, base = lane / width * width, in_seg = lane % width;
	unsigned src = lane;

	switch (w.op) {
	case W_SHFL:
		src = base + ((unsigned)w.arg[lane] % width);
		break;
	case W_SHFL_XOR:
		src = lane ^ (unsigned)w.arg[lane];
		if (src / width != lane / width)
			src = lane;
		break;
	case W_SHFL_DOWN:
		src = in_seg + (unsigned)w.arg[lane] < width ? lane + (unsigned)w.arg[lane] : lane;
		break;
	case W_SHFL_UP:
		src = in_seg >= (unsigned)w.arg[lane] ? lane - (unsigned)w.arg[lane] : lane;
		break;
	case W_BALLOT:
	case W_ANY:
	case W_ALL: {
		unsigned bal = 0;
		for (unsigned l = 0; l < 32; l++)
			if ((w.mask >> l & 1) && w.in[l])
				bal |= 1u << l;
		return w.op == W_BALLOT ? bal : w.op == W_ANY ? bal != 0 : bal == w.mask;
	}
	case W_SYNC:
		return 0;
	}
	if (src >= 32 || !(w.mask >> src & 1))
		die("shuffle reads a lane outside the mask");
	return w.in[src];
}

}  // namespace

void set_error(cudaError_t e)
{
	if (last_error == cudaSuccess)
		last_error = e;
}

void set_order(int order) { order_mode = order; }

stats last_stats() { return st; }

void *dyn_smem()
{
	return smem.data();
}

void barrier()
{
	Block *b = cur_block;

	if (!b)
		die("__syncthreads outside a kernel");
	b->f[b->cur].state = AT_BARRIER;
	yield();
}

uint64_t warp_meet(unsigned mask, warp_op op, uint64_t v, int arg, int width)
{
	Block *b = cur_block;
	const unsigned lin = b->cur, lane = lin % 32;
	Warp &w = b->w[lin / 32];

	st.warp_ops++;
	if (!(mask >> lane & 1))
		die("a lane calls a warp operation with a mask that leaves it out");
	if (mask & ~w.exist)
		die("warp mask names lanes this block does not have");
	if (width < 1 || width > 32 || (width & (width - 1)))
		die("shuffle width is not a power of two in 1..32");
	if (w.arrived == 0) {
		w.mask = mask;
		w.op = op;
		w.width = width;
	} else if (w.mask != mask || w.op != op || w.width != width) {
		die("lanes of one warp meet at different warp operations or masks");
	}
	w.in[lane] = v;
	w.arg[lane] = arg;
	w.arrived |= 1u << lane;
	if (w.arrived == mask) {
		for (unsigned l = 0; l < 32; l++)
			if (mask >> l & 1)
				w.out[l] = lane_result(w, l);
		w.arrived = 0;
		for (unsigned l = 0; l < 32; l++)
			if ((mask >> l & 1) && l != lane)
				b->f[lin / 32 * 32 + l].state = RUN;
	} else {
		b->f[lin].state = AT_WARP;
		yield();
	}
	return w.out[lane];
}

void run_grid(dim3 grid, dim3 block, size_t shmem, void (*body)(void *), void *arg)
{
	const unsigned long long nt = (unsigned long long)block.x * block.y * block.z;
	const unsigned long long nb = (unsigned long long)grid.x * grid.y * grid.z;
	Block b;

	st = stats{};
	if (cur_block)
		die("a launch from inside a kernel");
	if (nt == 0 || nt > kMaxThreads || block.z > 64 || nb == 0 || grid.y > 65535 || grid.z > 65535 ||
	    shmem > kMaxShared) {
		set_error(cudaErrorInvalidConfiguration);
		return;
	}
	b.n = (unsigned)nt;
	b.f.resize(b.n);
	b.w.resize((b.n + 31) / 32);
	for (unsigned i = 0; i < b.n; i++) {
		b.f[i].tid = uint3{i % block.x, i / block.x % block.y, i / (block.x * block.y)};
		b.w[i / 32].exist |= 1u << (i % 32);
	}
	b.body = body;
	b.arg = arg;
	smem.assign(shmem ? shmem : 1, 0xff);
	blockDim = block;
	gridDim = grid;
	cur_block = &b;
	for (unsigned z = 0; z < grid.z; z++)
		for (unsigned y = 0; y < grid.y; y++)
			for (unsigned x = 0; x < grid.x; x++) {
				const unsigned long long flat = x + (unsigned long long)grid.x * (y + (unsigned long long)grid.y * z);
				blockIdx = uint3{x, y, z};
				memset(smem.data(), 0xff, smem.size());
				run_block(&b, order_mode == 1 && (flat & 1));
			}
	cur_block = nullptr;
	threadIdx = uint3{0, 0, 0};
}

}  // namespace simt
