/* bts's Valgrind tool: which instructions branch (by opcode), and the IR
   that records their branches as the superblock runs. */

#include "bts.h"

/* The cursor's place as IR addresses it: in the first shadow state. */
static Int cursor_ir_offset;

/* A system call is recorded when it returns, as (syscall -> where user
   code resumed): one that never returns (exit) records nothing, as under
   the ptrace recorders and the hardware. */
static VG_REGPARM(1) void rec_syscall(HWord from)
{
   bts_bufs[bts_cursor_tid].syscall_from = from; /* called from client code: the cursor is loaded */
}

/* ------------------------------------------------------------------ */
/* Branch classification by opcode                                    */

enum { NOT_BRANCH = 0, COND, UNCOND, SYSCALL };

/* Where the opcode of the instruction at p, len bytes, begins. */
static UInt skip_prefixes(const UChar *p, UInt len)
{
   UInt i = 0;
   while (i < len) {
      UChar c = p[i];
      if (c == 0x66 || c == 0x67 || c == 0xf2 || c == 0xf3 || c == 0x2e || c == 0x3e
          || c == 0x26 || c == 0x64 || c == 0x65 || c == 0x36 || c == 0xf0
          || (c >= 0x40 && c <= 0x4f)) { i++; continue; }
      break;
   }
   return i;
}

static Int branch_kind(Addr a, UInt len)
{
   const UChar *p = (const UChar *)a;
   UInt i = skip_prefixes(p, len);
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

/* Whether the conditional branch at `a`, `len` bytes, goes to the next
   instruction (a displacement of 0), taken or not; `op` is then its
   opcode byte that holds the condition (0x7c, or 0x8c after 0x0f: code c;
   0xe0 to 0xe3: loopne, loope, loop, jrcxz), with 0x100 for a 32-bit
   count (an address-size prefix). */
static Bool zero_displacement(Addr a, UInt len, UInt *op)
{
   const UChar *p = (const UChar *)a;
   UInt i = skip_prefixes(p, len);
   UInt at = i + (p[i] == 0x0f);
   for (UInt k = at + 1; k < len; k++)
      if (p[k] != 0) return False;
   *op = p[at];
   for (UInt k = 0; k < i; k++)
      if (p[k] == 0x67) *op |= 0x100;
   return True;
}

/* Whether the exit to `dst` of the conditional branch at `a` is the leg
   not taken: the exit to the next instruction is, but when the
   displacement is 0 both legs go there. Then VEX (guest_amd64_toIR.c,
   jcc_01) tests the positive form of the condition and exits when it
   holds: for an odd condition code (jne, jae, jge, ...) that is the leg
   not taken, for an even one (and jrcxz, loop) the leg taken. */
static Bool exit_is_not_taken(Addr a, UInt len, Addr dst)
{
   UInt op;
   if (dst != a + len) return False;
   if (!zero_displacement(a, len, &op)) return True;
   return (op & 0xff) < 0xe0 && (op & 1);
}

/* Whether condition code `cc` holds for the flags `f`. */
static Bool holds(UInt cc, ULong f)
{
   Bool of = (f >> 11) & 1, cf = f & 1, zf = (f >> 6) & 1, sf = (f >> 7) & 1, pf = (f >> 2) & 1;
   Bool r;
   switch (cc >> 1) {
   case 0: r = of; break;
   case 1: r = cf; break;
   case 2: r = zf; break;
   case 3: r = cf || zf; break;
   case 4: r = sf; break;
   case 5: r = pf; break;
   case 6: r = sf != of; break;
   default: r = zf || sf != of; break;
   }
   return (cc & 1) ? !r : r;
}

/* A conditional branch to the next instruction whose outcome VEX worked
   out in translation (xor ecx, ecx; jrcxz): no exit is left, and both
   outcomes end the superblock at the next instruction. At run time, the
   guest's flags and count register (RCX is already counted down by a
   loop) say whether it was taken; `op` is as zero_displacement gives it.
   Called from client code: bts_push puts the cursor back and loads it
   again, and the call says it modifies it. */
static void rec_jcc_zero(VexGuestAMD64State *gs, HWord from, HWord next, HWord op)
{
   ULong f = LibVEX_GuestAMD64_get_rflags(gs);
   ULong count = op & 0x100 ? gs->guest_RCX & 0xffffffffULL : gs->guest_RCX;
   Bool zf = (f >> 6) & 1, taken;
   switch (op & 0xff) {
   case 0xe0: taken = count != 0 && !zf; break;
   case 0xe1: taken = count != 0 && zf; break;
   case 0xe2: taken = count != 0; break;
   case 0xe3: taken = count == 0; break;
   default: taken = holds(op & 0xf, f); break;
   }
   if (taken) bts_push(bts_cursor_tid, from, next, 0);
}

/* Declares that the call `d` has effect `e` on the guest state's bytes
   offset..offset+size. */
static void fx(IRDirty *d, IREffect e, Int offset, Int size)
{
   d->fxState[d->nFxState].fx = e;
   d->fxState[d->nFxState].offset = offset;
   d->fxState[d->nFxState].size = size;
   d->fxState[d->nFxState].nRepeats = 0;
   d->fxState[d->nFxState].repeatLen = 0;
   d->nFxState++;
}

#define GUEST(field) __builtin_offsetof(VexGuestAMD64State, field)

/* The call to rec_jcc_zero for the branch at `a`, `len` bytes. */
static IRStmt *jcc_zero_call(Addr a, UInt len, UInt op)
{
   IRDirty *d = unsafeIRDirty_0_N(
      0, "bts_rec_jcc_zero", VG_(fnptr_to_fnentry)(&rec_jcc_zero),
      mkIRExprVec_4(IRExpr_GSPTR(), mkIRExpr_HWord(a), mkIRExpr_HWord(a + len), mkIRExpr_HWord(op)));
   fx(d, Ifx_Read, GUEST(guest_CC_OP), 4 * sizeof(ULong)); /* the flags' thunk */
   fx(d, Ifx_Read, GUEST(guest_RCX), sizeof(ULong));
   fx(d, Ifx_Read, GUEST(guest_DFLAG), sizeof(ULong));
   fx(d, Ifx_Read, GUEST(guest_IDFLAG), sizeof(ULong));
   fx(d, Ifx_Read, GUEST(guest_ACFLAG), sizeof(ULong));
   fx(d, Ifx_Modify, cursor_ir_offset, sizeof(Cursor));
   return IRStmt_Dirty(d);
}

/* ------------------------------------------------------------------ */
/* Instrumentation                                                    */

/* The record is written in IR, inline: no helper call per branch, and no
   value in it that waits for a branch's outcome.

   A conditional exit inside a superblock stores its record past the
   write index, and the index advanced, before the exit; if the exit is
   not taken, the code after it puts the index back. Both are constants
   off the index the superblock loaded: the processor predicts the exit
   and runs on. An
   index computed from the exit's condition (an add or a conditional move)
   would chain every superblock to the condition of the one before, and
   that chain cost gzip about a fifth more time than this.

   The index and the ring are read from the thread's shadow state once,
   at the superblock's first record; a record is the index advanced, put
   back and masked, and its 8-byte stores made by its layout
   (bts_branch_layout) at the masked place: six host instructions for a
   direct branch, with the two reads, eight for an indirect one.
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
   record. `index` is the write index on this path; `ahead` says the shadow
   state holds more, from a conditional exit that was not taken. */
typedef struct { Bool loaded, ahead; IRTemp index, base; } SbCursor;

static void cursor_set(IRSB *sb, IRTemp index)
{
   addStmtToIRSB(sb, IRStmt_Put(cursor_ir_offset, IRExpr_RdTmp(index)));
}

/* A record, its tag at base[(index + len) & mask] and its other slots
   just below; each address is its own expression, so that it becomes one
   addressing mode. The index past it is put in the shadow state at once;
   if `taken`, it is this path's from now on. */
static void store_record(IRSB *sb, SbCursor *c, Addr from, IRExpr *to, Bool taken)
{
   if (!c->loaded) {
      c->index = ir_tmp(sb, IRExpr_Get(cursor_ir_offset, Ity_I64));
      c->base = ir_tmp(sb, IRExpr_Get(cursor_ir_offset + 8, Ity_I64));
      c->loaded = True;
   }
   Bool direct = to->tag == Iex_Const;
   Long n = bts_site_number(from, direct ? to->Iex.Const.con->Ico.U64 : INDIRECT);
   Layout l = bts_branch_layout(n, !direct, from);
   IRTemp next = ir_tmp(sb, ir_add(c->index, l.len + (l.len - 1) * EXTRA));
   cursor_set(sb, next);
   IRTemp m = ir_tmp(sb, IRExpr_Binop(Iop_And64, IRExpr_RdTmp(next), mkIRExpr_HWord(bts_ring_mask)));
   for (UInt k = 0; k < l.nstores; k++) {
      const Store *s = &l.store[k];
      IRTemp sh = ir_tmp(sb, IRExpr_Binop(Iop_Shl64, IRExpr_RdTmp(m), IRExpr_Const(IRConst_U8(1))));
      IRTemp at = ir_tmp(sb, IRExpr_Binop(Iop_Add64, IRExpr_RdTmp(c->base), IRExpr_RdTmp(sh)));
      if (s->at) at = ir_tmp(sb, ir_add(at, (HWord)(2 * (Long)s->at)));
      addStmtToIRSB(sb, IRStmt_Store(Iend_LE, IRExpr_RdTmp(at), s->is_to ? to : mkIRExpr_HWord(s->value)));
   }
   if (taken) c->index = next;
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
   if (c->ahead) cursor_set(sb, c->index);
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

IRSB *bts_instrument(VgCallbackClosure *closure, IRSB *in,
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
         bts_cache_code(cur, curlen);
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
         if (kind == COND && exit_is_not_taken(cur, curlen, dst))
            inverted = cur;
         else if (kind == COND || kind == UNCOND)
            record_exit(out, &c, cur, mkIRExpr_HWord(dst));
      }
      addStmtToIRSB(out, st);
   }
   if (cur) {
      Int kind = branch_kind(cur, curlen);
      IRExpr *next = out->next; /* turned round, maybe */
      /* The end is the leg taken unless it is to the next instruction and
         no exit was the leg not taken (a displacement of 0 goes there either
         way). */
      Bool falls = next->tag == Iex_Const && next->Iex.Const.con->Ico.U64 == cur + curlen
                   && inverted != cur;
      Bool branchy = branchy_jk(in->jumpkind);
      UInt op;
      if (branchy && (kind == UNCOND || (kind == COND && !falls)))
         record(out, &c, cur, next);
      else {
         settle(out, &c);
         /* A jcc +0 that left no exit: VEX worked its outcome out. */
         if (branchy && kind == COND && !exited && zero_displacement(cur, curlen, &op))
            addStmtToIRSB(out, jcc_zero_call(cur, curlen, op));
         else if (in->jumpkind == Ijk_Sys_syscall && kind == SYSCALL) {
            IRDirty *d = unsafeIRDirty_0_N(1, "bts_rec_syscall",
                                           VG_(fnptr_to_fnentry)(&rec_syscall),
                                           mkIRExprVec_1(mkIRExpr_HWord(cur)));
            addStmtToIRSB(out, IRStmt_Dirty(d));
         }
      }
   }
   return out;
}

