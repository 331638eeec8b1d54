/* bts: a Valgrind tool that plays the BTS hardware.
 *
 * Every taken branch of the client is written into its thread's circular
 * buffer, the way the Debug Store would (in one to three 8-byte words; the
 * file gets 24-byte BTS records, from, to and flags). Superblock exits on branch instructions record, counted only
 * when the exit is taken; the not-taken leg of a conditional records nothing;
 * a superblock end that is not a branch (size limit, rep self-loop, client
 * request) records nothing. Signal delivery into a handler is recorded as an
 * asynchronous branch; thread switches add "task arrives/departs" records.
 * At the end (normal exit or fatal signal) the buffers, the executable
 * mappings seen and the code pages translated are written to a file that
 * bts reads. The tool turns off VEX's chasing (a chased branch leaves no
 * exit to instrument). The copies of a loop VEX unrolled run into each
 * other: a back edge there is recorded where the next copy begins.
 *
 * Everything else (reading, decoding, reporting) is done in Rust.
 */

#include "pub_tool_basics.h"
#include "pub_tool_tooliface.h"
#include "pub_tool_libcassert.h"
#include "pub_tool_libcprint.h"
#include "pub_tool_libcbase.h"
#include "pub_tool_libcfile.h"
#include "pub_tool_libcproc.h"
#include "pub_tool_machine.h"
#include "pub_tool_mallocfree.h"
#include "pub_tool_options.h"
#include "pub_tool_aspacemgr.h"
#include "pub_tool_threadstate.h"
#include "pub_tool_vki.h"
#include "pub_tool_clientstate.h"
#include "pub_tool_xarray.h"

/* ------------------------------------------------------------------ */
/* Options                                                            */

static const HChar *out_prefix = "bts-valgrind";
static Long records_per_thread = 2730 + 426; /* 64 KiB + 10 KiB slack */

static Bool bts_process_cmd_line_option(const HChar *arg)
{
   if VG_STR_CLO(arg, "--bts-out", out_prefix) {}
   else if VG_INT_CLO(arg, "--bts-records", records_per_thread) {}
   else return False;
   return True;
}

static void bts_print_usage(void)
{
   VG_(printf)("    --bts-out=PREFIX          write the trace to PREFIX.PID.N\n"
               "    --bts-records=N           records per thread buffer\n");
}

static void bts_print_debug_usage(void) {}

/* ------------------------------------------------------------------ */
/* DS-like circular buffers, one per thread                           */

/* A thread's ring is a circle of 8-byte words. A record is one to three
   words, and its last word, its tag, says what it is, so that the ring is
   read backwards from its newest end:
     SITE + n             a direct branch: sites[n] (one word)
     to, ISITE + n        an indirect branch from sites[n].from (two words)
     payload, ESCAPE | k  a context record of kind k: the time in the
                          payload's high half, the task's id in its low half
     from, to, RAW        any other branch (three words)
   The tags are kernel addresses no user branch has, which the generated
   code stores as sign-extended 32-bit immediates. A direct branch in one
   word keeps the default ring (3156 records) in 32 KiB, inside the L1
   cache: at 16 bytes a record it took 64 KiB, and the -O1 call/ret/jcc
   loop ran a fifth slower. The file gets 24-byte BTS records (put_rec). */
#define ESCAPE (~0xFULL)
#define SITE 0xFFFFFFFF80000000ULL
#define ISITE 0xFFFFFFFF90000000ULL
#define RAW 0xFFFFFFFFA0000000ULL
#define MAX_SITES (1U << 24) /* then RAW: a program making code never ends */
#define INDIRECT (~0ULL)     /* the `to` of an indirect branch's site */

/* The direct branches met in translation, numbered: (from, to) is known
   then, so the generated code stores the number alone. Each pair is
   numbered once (a hash set of numbers + 1), however often its code is
   translated again. An indirect branch's site is (from, INDIRECT). Past
   MAX_SITES, new ones are stored in three words. */
typedef struct { Addr from, to; } Site;
static Site *sites;
static UInt nsites, sites_cap;
static UInt *site_set;
static UWord site_set_mask;

static UWord site_hash(Addr from, Addr to)
{
   ULong h = (from ^ (to * 0xC2B2AE3D27D4EB4FULL)) * 0x9E3779B97F4A7C15ULL;
   return h ^ (h >> 32); /* the masks take the low bits: mix the high ones in */
}

static void site_set_add(UInt id)
{
   UWord h = site_hash(sites[id].from, sites[id].to);
   while (site_set[h & site_set_mask]) h++;
   site_set[h & site_set_mask] = id + 1;
}

/* The number of the site (from, to), or -1 past MAX_SITES. */
static Long site_number(Addr from, Addr to)
{
   if (2 * (nsites + 1) > site_set_mask) {
      UWord size = site_set_mask ? 2 * (site_set_mask + 1) : 4096;
      VG_(free)(site_set);
      site_set = VG_(calloc)("bts.sites", size, sizeof *site_set);
      site_set_mask = size - 1;
      for (UInt k = 0; k < nsites; k++) site_set_add(k);
   }
   for (UWord h = site_hash(from, to);; h++) {
      UInt id = site_set[h & site_set_mask];
      if (!id) break;
      if (sites[id - 1].from == from && sites[id - 1].to == to) return id - 1;
   }
   if (nsites >= MAX_SITES) return -1;
   if (nsites == sites_cap) {
      sites_cap = sites_cap ? 2 * sites_cap : 4096;
      sites = VG_(realloc)("bts.sites", sites, sites_cap * sizeof *sites);
   }
   sites[nsites].from = from;
   sites[nsites].to = to;
   site_set_add(nsites);
   return nsites++;
}

/* The ring's words are a power of two (ring_mask + 1, the same for every
   thread), more than the records kept. A record of len words written
   when the index was w has its tag at base[(w + len) & ring_mask] and
   its other words just below the tag, unmasked: a record whose tag falls
   at the ring's start spills into base[-1] and base[-2], which exist.
   So the generated code masks the index it has just advanced, once, and
   the slots past the index (where the next record goes) never hold a
   kept record: the inline writer stores a record there before it knows
   whether the branch is taken. */
typedef struct {
   ULong *base;     /* the ring */
   ULong words;     /* words written */
   ULong extra;     /* words written past the first of each record */
   ULong max;       /* records kept */
   ULong contexts;  /* context records written (the rest are branches) */
   Int   os_tid;
   Addr  syscall_from; /* a system call instruction about to run */
   Addr  last_pc;      /* where the thread was when it exited */
} Buf;

static Buf *bufs; /* VG_N_THREADS of them, allocated after the options */
static ULong ring_mask; /* ring words - 1 */

/* The length of the record whose tag is word number a (from 1) of the
   ring, and its words, tag last; 0 for a word that is no tag. */
static UInt record_at(const Buf *b, ULong a, ULong w[3])
{
   const ULong *tag = &b->base[a & ring_mask];
   ULong t = *tag;
   UInt len = t >= ESCAPE                                ? 2
              : t == RAW                                 ? 3
              : t >= ISITE && t < ISITE + MAX_SITES      ? 2
              : t >= SITE && t < SITE + MAX_SITES        ? 1
                                                         : 0;
   for (UInt j = 0; j < len; j++) w[j] = tag[(Long)j - (Long)(len - 1)];
   return len;
}

/* The cursor of the thread running client code: its write index and its
   ring. The index's low 40 bits count words written (modulo 2^40, which
   is all a place in the ring needs), its high 24 the words written past
   the first of each record since the cursor was loaded: an indirect
   branch adds 2 + 2^40 to it, with no second count to keep. At least one
   in 2^24 of these gets back to the scheduler (each indirect branch
   passes an event check, and Valgrind leaves client code every 100000),
   and stop_client folds the index into the Buf's full counts. It lives in the
   thread's first shadow guest state (no shadow values are kept here), so
   the generated code reads and writes it next to the registers, with no
   address to build. Valgrind runs one thread at a time; start_client
   loads a thread's cursor from its Buf and stop_client puts it back, so
   between them the cursor is the truth. (Valgrind copies shadow state
   into a new thread and into a signal frame and back: those copies are
   never read, as start_client always loads the cursor afresh.) */
typedef struct { ULong index; ULong *base; } Cursor;
#define CURSOR_OFFSET 16 /* in the shadow state: the places of guest RAX, RCX */
#define LOW40 ((1ULL << 40) - 1)
#define EXTRA (1ULL << 40) /* one extra word, in the index */
static Int cursor_ir_offset; /* the same, as IR addresses the shadow state */
static ThreadId cursor_tid;  /* whose cursor is loaded; 0 when none is */

static Buf *buf_of(ThreadId tid)
{
   Buf *b = &bufs[tid];
   if (!b->base) {
      b->max = records_per_thread > 0 ? (ULong)records_per_thread : 1;
      b->base = (ULong *)VG_(calloc)("bts.buf", ring_mask + 1 + 2, sizeof(ULong)) + 2;
   }
   return b;
}

static void cursor_load(ThreadId tid)
{
   Buf *b = buf_of(tid);
   Cursor c = { b->words & LOW40, b->base };
   VG_(set_shadow_regs_area)(tid, 1, CURSOR_OFFSET, sizeof c, (const UChar *)&c);
   cursor_tid = tid;
}

static void cursor_store(void)
{
   if (!cursor_tid) return;
   Cursor c;
   VG_(get_shadow_regs_area)(cursor_tid, (UChar *)&c, 1, CURSOR_OFFSET, sizeof c);
   Buf *b = &bufs[cursor_tid];
   b->words += ((c.index & LOW40) - (b->words & LOW40)) & LOW40;
   b->extra += c.index >> 40;
   cursor_tid = 0;
}

/* A record written from C: outside client code, or in a signal taken in
   the middle of it (then the cursor is the truth: it is put back first,
   and loaded again after). */
static void push(ThreadId tid, ULong from, ULong to, ULong flags)
{
   Bool live = tid == cursor_tid;
   if (live) cursor_store();
   Buf *b = buf_of(tid);
   ULong w[3] = { from, to, RAW };
   UInt len = 3;
   if (from >= ESCAPE) {
      w[0] = (to << 32) | (flags & 0xffffffffULL);
      w[1] = from;
      len = 2;
      b->contexts++;
   }
   ULong *tag = &b->base[(b->words + len) & ring_mask];
   for (UInt j = 0; j < len; j++) tag[(Long)j - (Long)(len - 1)] = w[j];
   b->words += len;
   b->extra += len - 1;
   if (live) cursor_load(tid);
}

/* A system call is recorded when it returns, as (syscall -> where user
   code resumed): one that never returns (exit) records nothing, as under
   the ptrace recorders and the hardware. */
static VG_REGPARM(1) void rec_syscall(HWord from)
{
   bufs[cursor_tid].syscall_from = from; /* called from client code: the cursor is loaded */
}

/* The status the process exits with: Valgrind passes 0 to fini, so the
   tool takes it from exit_group (or the exit of a thread). */
static Int exit_status;

/* The client's signal handlers, as it set them (rt_sigaction): a signal
   delivered to a handler is recorded at once, (where it struck -> the
   handler's entry), as the hardware records the asynchronous transfer. No
   superblock has to look whether a handler was just entered. */
static Addr handlers[65];

static void pre_syscall(ThreadId tid, UInt no, UWord *args, UInt nargs)
{
   if ((no == 60 || no == 231) && nargs > 0)
      exit_status = (Int)(args[0] & 0xff);
}

static void post_syscall(ThreadId tid, UInt no, UWord *args, UInt nargs, SysRes res)
{
   /* rt_sigaction(sig, act, ...): the handler is act's first word. */
   if (no == 13 && nargs >= 2 && !sr_isError(res) && args[1]
       && args[0] > 0 && args[0] < 65
       && VG_(am_is_valid_for_client)(args[1], sizeof(Addr), VKI_PROT_READ))
      handlers[args[0]] = *(Addr *)args[1];
   Buf *b = buf_of(tid);
   if (!b->syscall_from) return;
   /* Valgrind runs exit and exit_group itself and still calls us back. */
   if (no == 60 || no == 231) {
      b->syscall_from = 0;
      return;
   }
   push(tid, b->syscall_from, VG_(get_IP)(tid), 0);
   b->syscall_from = 0;
}

static void pre_deliver_signal(ThreadId tid, Int sig, Bool alt)
{
   /* Only for a signal with a handler; 0 and 1 are SIG_DFL and SIG_IGN. */
   if (sig > 0 && sig < 65 && handlers[sig] > 1)
      push(tid, VG_(get_IP)(tid), handlers[sig], 0);
}

/* Valgrind runs one thread at a time and stops it at every system call
   and time slice. A switch to another thread is what a context switch is
   to the hardware: only then "departs" (old thread) and "arrives" (new
   thread) records are written, as the ptrace recorders write them when a
   thread changes CPU. So a buffer holds as many branches here as there. */
static ThreadId last_running;

static void start_client(ThreadId tid, ULong blocks)
{
   Buf *b = buf_of(tid);
   if (!b->os_tid) b->os_tid = VG_(gettid)();
   if (tid != last_running) {
      ULong now = VG_(read_millisecond_timer)();
      if (last_running != 0 && bufs[last_running].base)
         push(last_running, ESCAPE | 3, now, (ULong)bufs[last_running].os_tid);
      push(tid, ESCAPE | 2, now, (ULong)b->os_tid);
      last_running = tid;
   }
   cursor_load(tid);
}

static void stop_client(ThreadId tid, ULong blocks)
{
   cursor_store();
}

/* Valgrind gives a thread id again to a new thread once its thread has
   exited: the old thread's buffer is set aside, whole, and written out
   with the others, so that two threads' branches never share one. */
static Buf *retired;
static UInt nretired;

static void thread_exits(ThreadId tid)
{
   bufs[tid].last_pc = VG_(get_IP)(tid);
}

static void thread_created(ThreadId parent, ThreadId child)
{
   Buf *b = &bufs[child];
   if (!b->base) return;
   retired = VG_(realloc)("bts.retired", retired, (nretired + 1) * sizeof *retired);
   retired[nretired++] = *b;
   VG_(memset)(b, 0, sizeof *b);
   if (last_running == child) last_running = 0;
}

/* ------------------------------------------------------------------ */
/* Executable mappings (kept after munmap) and translated code pages  */

#define MAX_MAPS 4096
typedef struct { Addr start, end; ULong offset; HChar path[512]; } Map;
static Map maps[MAX_MAPS];
static Int nmaps;

static void note_map(Addr a, SizeT len, Bool rr, Bool ww, Bool xx, ULong di)
{
   if (!xx || nmaps >= MAX_MAPS || len == 0) return;
   NSegment const *seg = VG_(am_find_nsegment)(a);
   const HChar *name = seg ? VG_(am_get_filename)(seg) : NULL;
   Map *m = &maps[nmaps++];
   m->start = a;
   m->end = a + len;
   m->offset = seg ? seg->offset + (a - seg->start) : 0;
   VG_(strncpy)(m->path, name ? name : "", sizeof m->path - 1);
   m->path[sizeof m->path - 1] = 0;
}

#define PAGE 4096UL
#define MAX_PAGES (1 << 16)
#define PAGE_SLOTS (1 << 17)
static Addr page_key[PAGE_SLOTS];
static UChar *page_data[PAGE_SLOTS];
static Int npages;

static void cache_page(Addr p)
{
   UWord h = (p / PAGE) * 2654435761u;
   for (UWord i = 0; i < PAGE_SLOTS; i++) {
      UWord s = (h + i) & (PAGE_SLOTS - 1);
      if (page_key[s] == p) return;
      if (page_key[s] == 0) {
         if (npages >= MAX_PAGES) return;
         page_key[s] = p;
         page_data[s] = VG_(malloc)("bts.page", PAGE);
         VG_(memcpy)(page_data[s], (void *)p, PAGE);
         npages++;
         return;
      }
   }
}

static void cache_code(Addr a, UInt len)
{
   for (Addr p = a & ~(PAGE - 1); p < a + len; p += PAGE) cache_page(p);
}

/* ------------------------------------------------------------------ */
/* Branch classification by opcode                                    */

enum { NOT_BRANCH = 0, COND, UNCOND, SYSCALL };

static Int branch_kind(Addr a, UInt len)
{
   const UChar *p = (const UChar *)a;
   UInt i = 0;
   while (i < len) {
      UChar c = p[i];
      if (c == 0x66 || c == 0x67 || c == 0xf2 || c == 0xf3 || c == 0x2e || c == 0x3e
          || c == 0x26 || c == 0x64 || c == 0x65 || c == 0x36 || c == 0xf0
          || (c >= 0x40 && c <= 0x4f)) { i++; continue; }
      break;
   }
   if (i >= len) return NOT_BRANCH;
   UChar op = p[i];
   if ((op >= 0x70 && op <= 0x7f) || (op >= 0xe0 && op <= 0xe3)) return COND;
   if (op == 0x0f && i + 1 < len) {
      UChar op2 = p[i + 1];
      if (op2 >= 0x80 && op2 <= 0x8f) return COND;
      if (op2 == 0x05 || op2 == 0x34) return SYSCALL;
      return NOT_BRANCH;
   }
   switch (op) {
   case 0xe8: case 0xe9: case 0xeb: case 0xc2: case 0xc3: case 0xca: case 0xcb:
   case 0xcf: case 0xea: case 0x9a:
      return UNCOND;
   case 0xff:
      if (i + 1 < len) {
         UInt reg = (p[i + 1] >> 3) & 7;
         if (reg >= 2 && reg <= 5) return UNCOND;
      }
      return NOT_BRANCH;
   case 0xcd:
      return (i + 1 < len && p[i + 1] == 0x80) ? SYSCALL : NOT_BRANCH;
   default:
      return NOT_BRANCH;
   }
}

/* ------------------------------------------------------------------ */
/* Instrumentation                                                    */

/* The record is written in IR, inline: no helper call per branch, and no
   value in it that waits for a branch's outcome.

   A conditional exit stores its record in the slot at the write index,
   and the index one on, before the exit; if the exit is not taken, the
   code after it stores the index back. Both are constants off the index
   the superblock loaded: the processor predicts the exit and runs on. An
   index computed from the exit's condition (an add or a conditional move)
   would chain every superblock to the condition of the one before, and
   that chain cost gzip about a fifth more time than this.

   The index and the ring are read from the thread's shadow state once,
   at the superblock's first record; a record is the index advanced, put
   back and masked, and its words stored below the masked place: six host
   instructions for a direct branch, with the two reads, eight for an
   indirect one.
   Everything is written in program order, so a fault in the middle of a
   superblock finds the index as the branches before it left it. */
static IRTemp ir_tmp(IRSB *sb, IRExpr *e)
{
   IRTemp t = newIRTemp(sb->tyenv, Ity_I64);
   addStmtToIRSB(sb, IRStmt_WrTmp(t, e));
   return t;
}

static IRExpr *ir_add(IRTemp t, HWord n)
{
   return IRExpr_Binop(Iop_Add64, IRExpr_RdTmp(t), mkIRExpr_HWord(n));
}

/* What a superblock knows of the cursor: read once, at its first
   record. `words` is the index on this path; `ahead` says the shadow
   state holds more, from a conditional exit that was not taken. */
typedef struct { Bool loaded, ahead; IRTemp words, base; } SbCursor;

static void cursor_set(IRSB *sb, IRTemp words)
{
   addStmtToIRSB(sb, IRStmt_Put(cursor_ir_offset, IRExpr_RdTmp(words)));
}

/* A record, its tag at base[(index + len) & mask] and its other words
   just below; each address is its own expression, so that it becomes one
   addressing mode. The index past it is put in the shadow state at once;
   if `taken`, it is this path's from now on. */
static void store_record(IRSB *sb, SbCursor *c, Addr from, IRExpr *to, Bool taken)
{
   if (!c->loaded) {
      c->words = ir_tmp(sb, IRExpr_Get(cursor_ir_offset, Ity_I64));
      c->base = ir_tmp(sb, IRExpr_Get(cursor_ir_offset + 8, Ity_I64));
      c->loaded = True;
   }
   Bool direct = to->tag == Iex_Const;
   Long n = site_number(from, direct ? to->Iex.Const.con->Ico.U64 : INDIRECT);
   ULong w[3] = { from, 0, RAW }; /* w[1], `to`, is the expression */
   UInt len = 3;
   if (n >= 0) {
      w[2] = (direct ? SITE : ISITE) + (ULong)n;
      len = direct ? 1 : 2;
   }
   IRTemp next = ir_tmp(sb, ir_add(c->words, len + (len - 1) * EXTRA));
   cursor_set(sb, next);
   IRTemp m = ir_tmp(sb, IRExpr_Binop(Iop_And64, IRExpr_RdTmp(next), mkIRExpr_HWord(ring_mask)));
   for (UInt j = 3 - len; j < 3; j++) {
      IRTemp sh = ir_tmp(sb, IRExpr_Binop(Iop_Shl64, IRExpr_RdTmp(m), IRExpr_Const(IRConst_U8(3))));
      IRTemp at = ir_tmp(sb, IRExpr_Binop(Iop_Add64, IRExpr_RdTmp(c->base), IRExpr_RdTmp(sh)));
      if (j < 2) at = ir_tmp(sb, ir_add(at, (HWord)(-8 * (Long)(2 - j))));
      IRExpr *word = j == 1 ? to : mkIRExpr_HWord(w[j]);
      addStmtToIRSB(sb, IRStmt_Store(Iend_LE, IRExpr_RdTmp(at), word));
   }
   if (taken) c->words = next;
   c->ahead = !taken;
}

/* A branch taken here. */
static void record(IRSB *sb, SbCursor *c, Addr from, IRExpr *to)
{
   store_record(sb, c, from, to, True);
}

/* A branch taken if the exit that follows is: counted as if it were. */
static void record_exit(IRSB *sb, SbCursor *c, Addr from, IRExpr *to)
{
   store_record(sb, c, from, to, False);
}

/* Past an exit not taken: the index back as it was. */
static void settle(IRSB *sb, SbCursor *c)
{
   if (c->ahead) cursor_set(sb, c->words);
   c->ahead = False;
}

static Bool branchy_jk(IRJumpKind jk)
{
   return jk == Ijk_Boring || jk == Ijk_Call || jk == Ijk_Ret;
}

/* A superblock that ends in a conditional branch, `if (c) goto T; goto
   F` with F the fall-through, is turned round: `if (!c) goto F; goto T`.
   Both are the same jump, but now the leg not taken leaves at the exit,
   before any record or index is touched, and only the taken leg (at the
   end) writes a record: the inverted form below, which costs the branch
   not taken nothing. The last statement must be the exit, and the last
   instruction the branch. Returns the exit to put in its place, or NULL. */
static IRStmt *turned_exit(IRSB *in, IRSB *out, Addr cur, UInt curlen)
{
   if (!cur || in->stmts_used == 0 || in->jumpkind != Ijk_Boring) return NULL;
   IRStmt *st = in->stmts[in->stmts_used - 1];
   IRExpr *next = in->next;
   if (st->tag != Ist_Exit || st->Ist.Exit.jk != Ijk_Boring || next->tag != Iex_Const
       || next->Iex.Const.con->Ico.U64 != cur + curlen
       || st->Ist.Exit.dst->Ico.U64 == cur + curlen || st->Ist.Exit.offsIP != in->offsIP
       || branch_kind(cur, curlen) != COND)
      return NULL;
   IRTemp not_c = newIRTemp(out->tyenv, Ity_I1);
   addStmtToIRSB(out, IRStmt_WrTmp(not_c, IRExpr_Unop(Iop_Not1, st->Ist.Exit.guard)));
   out->next = IRExpr_Const(IRConst_U64(st->Ist.Exit.dst->Ico.U64));
   return IRStmt_Exit(IRExpr_RdTmp(not_c), Ijk_Boring, IRConst_U64(cur + curlen), in->offsIP);
}

static IRSB *bts_instrument(VgCallbackClosure *closure, IRSB *in,
                            const VexGuestLayout *layout, const VexGuestExtents *vge,
                            const VexArchInfo *archinfo_host, IRType gWordTy, IRType hWordTy)
{
   IRSB *out = deepCopyIRSBExceptStmts(in);
   cursor_ir_offset = layout->total_sizeB + CURSOR_OFFSET; /* the first shadow state */
   Int i = 0;
   while (i < in->stmts_used && in->stmts[i]->tag != Ist_IMark) {
      addStmtToIRSB(out, in->stmts[i]);
      i++;
   }
   Addr cur = 0;
   UInt curlen = 0;
   /* An inverted conditional exit (to the fall-through) that was not taken
      means the branch was: if execution goes on in this superblock (VEX
      unrolled a loop), the next instruction is its target. */
   Addr inverted = 0;
   /* The current instruction is a branch whose leaving was recorded at an
      exit. An unconditional branch that made none, yet is followed by
      another instruction in this superblock, ran into a copy of the loop
      VEX unrolled: it was taken, to that instruction. */
   Bool exited = False;
   SbCursor c = { False, False, 0, 0 };
   for (; i < in->stmts_used; i++) {
      IRStmt *st = in->stmts[i];
      if (st->tag == Ist_IMark) {
         Addr next_insn = st->Ist.IMark.addr + st->Ist.IMark.delta;
         settle(out, &c);
         if (inverted) {
            record(out, &c, inverted, mkIRExpr_HWord(next_insn));
            inverted = 0;
         } else if (cur && !exited && branch_kind(cur, curlen) == UNCOND) {
            record(out, &c, cur, mkIRExpr_HWord(next_insn));
         }
         exited = False;
         cur = next_insn;
         curlen = st->Ist.IMark.len;
         cache_code(cur, curlen);
      } else if (st->tag == Ist_Exit) {
         if (i == in->stmts_used - 1) {
            IRStmt *turned = turned_exit(in, out, cur, curlen);
            if (turned) st = turned;
         }
         ULong dst = st->Ist.Exit.dst->Ico.U64;
         Int kind = cur && branchy_jk(st->Ist.Exit.jk) ? branch_kind(cur, curlen) : NOT_BRANCH;
         settle(out, &c);
         exited = exited || kind != NOT_BRANCH;
         /* The not-taken leg of an inverted conditional records nothing. */
         if (kind == COND && dst == cur + curlen)
            inverted = cur;
         else if (kind == COND || kind == UNCOND)
            record_exit(out, &c, cur, mkIRExpr_HWord(dst));
      }
      addStmtToIRSB(out, st);
   }
   if (cur) {
      Int kind = branch_kind(cur, curlen);
      IRExpr *next = out->next; /* turned round, maybe */
      Bool falls = next->tag == Iex_Const && next->Iex.Const.con->Ico.U64 == cur + curlen;
      if (branchy_jk(in->jumpkind) && (kind == UNCOND || (kind == COND && !falls)))
         record(out, &c, cur, next);
      else {
         settle(out, &c);
         if (in->jumpkind == Ijk_Sys_syscall && kind == SYSCALL) {
            IRDirty *d = unsafeIRDirty_0_N(1, "bts_rec_syscall",
                                           VG_(fnptr_to_fnentry)(&rec_syscall),
                                           mkIRExprVec_1(mkIRExpr_HWord(cur)));
            addStmtToIRSB(out, IRStmt_Dirty(d));
         }
      }
   }
   return out;
}

/* ------------------------------------------------------------------ */
/* Output                                                             */

static Int out_fd = -1;
static UChar wbuf[1 << 16];
static UInt wlen;

static void flush(void)
{
   if (wlen && out_fd >= 0) VG_(write)(out_fd, wbuf, wlen);
   wlen = 0;
}

static void put(const void *p, UInt n)
{
   const UChar *s = p;
   while (n) {
      UInt k = sizeof wbuf - wlen < n ? sizeof wbuf - wlen : n;
      VG_(memcpy)(wbuf + wlen, s, k);
      wlen += k; s += k; n -= k;
      if (wlen == sizeof wbuf) flush();
   }
}

static void put64(ULong v) { put(&v, 8); }

/* A record as the file has it: 24 bytes, from, to and flags (a context
   record's are its kind, time and task). `w` holds its words, tag last. */
static void put_rec(const ULong *w, UInt len)
{
   ULong tag = w[len - 1];
   if (tag >= ESCAPE) {
      put64(tag);
      put64(w[0] >> 32);
      put64(w[0] & 0xffffffffULL);
   } else if (tag == RAW) {
      put64(w[0]);
      put64(w[1]);
      put64(0);
   } else {
      const Site *s = &sites[tag - (tag >= ISITE ? ISITE : SITE)];
      put64(s->from);
      put64(tag >= ISITE ? w[0] : s->to);
      put64(0);
   }
}

/* A thread's part of the file: its header, then the newest records it
   keeps, oldest first. The ring is read back from its newest word, while
   a record lies whole in the words no later record (or the scratch place
   past the index) can have overwritten. */
static void put_buf(const Buf *b, Addr last_pc)
{
   ULong written = b->words - b->extra;
   ULong oldest = b->words > ring_mask - 3 ? b->words - (ring_mask - 3) : 1;
   ULong *tags = VG_(malloc)("bts.tags", (b->max ? b->max : 1) * sizeof *tags);
   ULong count = 0, w[3];
   for (ULong a = b->words; a >= oldest && count < b->max; count++) {
      UInt len = record_at(b, a, w);
      if (len == 0 || a < oldest + len - 1) break;
      tags[count] = a;
      a -= len;
   }
   put64((ULong)b->os_tid);
   put64((ULong)last_pc);
   put64(b->max);
   put64(written);
   put64(written - b->contexts);
   put64(count);
   for (ULong k = count; k > 0; k--) {
      UInt len = record_at(b, tags[k - 1], w);
      put_rec(w, len);
   }
   VG_(free)(tags);
}

static void bts_fini(Int exitcode)
{
   HChar name[1024];
   Int pid = VG_(getpid)();
   /* For the log: how the process ended when no signal ended it. */
   VG_(umsg)("bts: exit code %d\n", exit_status);
   for (Int n = 0; n < 1000 && out_fd < 0; n++) {
      VG_(snprintf)(name, sizeof name, "%s.%d.%d", out_prefix, pid, n);
      SysRes r = VG_(open)(name, VKI_O_CREAT | VKI_O_EXCL | VKI_O_WRONLY, 0600);
      if (!sr_isError(r)) out_fd = sr_Res(r);
   }
   if (out_fd < 0) {
      VG_(umsg)("bts: cannot write the trace to %s.%d.*\n", out_prefix, pid);
      return;
   }
   ULong nthreads = nretired;
   for (ThreadId t = 1; t < VG_N_THREADS; t++) if (bufs[t].base) nthreads++;
   put("BTSVG003", 8);
   put64((ULong)pid);
   put64((ULong)bufs[VG_(get_running_tid)()].os_tid);
   put64(nthreads);
   put64((ULong)nmaps);
   put64((ULong)npages);
   /* Valgrind has stopped running client code by now (stop_client put the
      cursor back); a cursor still loaded could only be the running
      thread's, whose shadow state can be read. */
   if (cursor_tid == VG_(get_running_tid)()) cursor_store();
   for (UInt r = 0; r < nretired; r++) put_buf(&retired[r], retired[r].last_pc);
   for (ThreadId t = 1; t < VG_N_THREADS; t++)
      if (bufs[t].base) put_buf(&bufs[t], VG_(get_IP)(t));
   for (Int m = 0; m < nmaps; m++) {
      put64(maps[m].start);
      put64(maps[m].end);
      put64(maps[m].offset);
      ULong len = VG_(strlen)(maps[m].path);
      put64(len);
      put(maps[m].path, (UInt)len);
   }
   for (UWord s = 0; s < PAGE_SLOTS; s++) {
      if (!page_key[s]) continue;
      put64(page_key[s]);
      put(page_data[s], PAGE);
   }
   /* The command line, so a child's crash is named by its own. */
   Word nargs = VG_(args_for_client) ? VG_(sizeXA)(VG_(args_for_client)) : 0;
   put64((ULong)nargs + 1);
   const HChar *exe = VG_(args_the_exename) ? VG_(args_the_exename) : "";
   put64(VG_(strlen)(exe));
   put(exe, (UInt)VG_(strlen)(exe));
   for (Word a = 0; a < nargs; a++) {
      const HChar *arg = *(HChar **)VG_(indexXA)(VG_(args_for_client), a);
      put64(VG_(strlen)(arg));
      put(arg, (UInt)VG_(strlen)(arg));
   }
   flush();
   VG_(close)(out_fd);
}

/* ------------------------------------------------------------------ */

static void bts_post_clo_init(void)
{
   /* Every taken branch must end a superblock, leave it at an exit, or
      run into the next copy of a loop VEX unrolled: no chasing, whatever
      the command line said. (Chasing in VEX 3.19 also turns an if-then
      into straight code with guarded effects, where a conditional branch
      leaves no trace in the IR.) */
   VG_(clo_vex_control).guest_chase = False;
   bufs = VG_(calloc)("bts.bufs", VG_N_THREADS, sizeof(Buf));
   /* Before any translation: the mask is a constant of the inline writer. */
   ULong keep = records_per_thread > 0 ? (ULong)records_per_thread : 1;
   /* Room for the records kept at 1.25 words each (a direct branch is
      one, an indirect one two), and for a record of three past the index. */
   ULong words = 16;
   while (words < keep + keep / 4 + 4) words <<= 1;
   ring_mask = words - 1;
}

static void bts_pre_clo_init(void)
{
   VG_(details_name)("bts");
   VG_(details_version)("0.1");
   VG_(details_description)("a branch trace store in software");
   VG_(details_copyright_author)("the bts developers");
   VG_(details_bug_reports_to)("the bts issue tracker");
   VG_(basic_tool_funcs)(bts_post_clo_init, bts_instrument, bts_fini);
   VG_(needs_command_line_options)(bts_process_cmd_line_option, bts_print_usage,
                                   bts_print_debug_usage);
   VG_(track_new_mem_startup)(note_map);
   VG_(track_new_mem_mmap)(note_map);
   VG_(track_pre_deliver_signal)(pre_deliver_signal);
   VG_(track_start_client_code)(start_client);
   VG_(track_stop_client_code)(stop_client);
   VG_(track_pre_thread_ll_create)(thread_created);
   VG_(track_pre_thread_ll_exit)(thread_exits);
   VG_(needs_syscall_wrapper)(pre_syscall, post_syscall);
}

VG_DETERMINE_INTERFACE_VERSION(bts_pre_clo_init)
