# bts commands for GDB: `source` this file, or pass it with -x.
# Printed by `bts gdbinit`; `bts gdb` loads it by itself.
#
#   last-branch [N]   the current thread's last N branches (default 16),
#                     oldest first, in bts's report format, from any btrace
#                     recording: bts's stub, or GDB's own `record btrace`.
#
# Branches are read through GDB's Python btrace API
# (gdb.current_recording()): a branch is where the next instruction of the
# history is not the one after the last, plus system calls, plus the step
# from the newest instruction to where the thread stands now.

python
import gdb
import os

def _bts_symbol(pc):
    try:
        s = gdb.execute("info symbol %#x" % pc, to_string=True).strip()
    except gdb.error:
        return None
    if not s or s.startswith("No symbol"):
        return None
    name = s.split(" in section ")[0]
    if " + " in name:
        base, off = name.rsplit(" + ", 1)
        try:
            return "%s+%#x" % (base, int(off))
        except ValueError:
            return name
    return name

def _bts_line(pc):
    try:
        sal = gdb.find_pc_line(pc)
    except gdb.error:
        return None
    if sal is None or sal.symtab is None or not sal.line:
        return None
    path = sal.symtab.fullname() or sal.symtab.filename
    short = "/".join(path.split("/")[-2:])
    return "%s:%d" % (short, sal.line)

def _bts_side(pc):
    s = "%#x" % pc
    sym = _bts_symbol(pc)
    if sym:
        s += " <%s>" % sym
    line = _bts_line(pc)
    if line:
        s += " %s" % line
    return s

_BTS_PREFIXES = ("notrack", "bnd", "rep", "repz", "repe", "data16", "cs", "ds")

def _bts_mnemonic(pc):
    try:
        asm = gdb.selected_inferior().architecture().disassemble(pc)[0]["asm"]
    except (gdb.error, gdb.MemoryError, IndexError):
        return None
    words = asm.split()
    while len(words) > 1 and words[0] in _BTS_PREFIXES:
        words = words[1:]
    return words[0] if words else None

def _bts_kind(pc, nxt, size):
    m = _bts_mnemonic(pc)
    if m is None:
        return "async"
    if m in ("syscall", "sysenter") or (m == "int" and nxt == pc + size):
        return "syscall"
    if m.startswith("call") or m.startswith("lcall"):
        return "call"
    if m.startswith("ret") or m.startswith("lret") or m.startswith("iret"):
        return "return"
    if m in ("jmp", "jmpq", "ljmp") or m.startswith("jmp"):
        return "jump"
    if m.startswith("j") or m.startswith("loop"):
        return "conditional"
    # Not a branch instruction: an asynchronous transfer (a signal).
    return "async"

def _bts_branches(rec, want):
    """The newest `want` branches, oldest first, as (from, to, kind)."""
    hist = rec.instruction_history
    out = []
    try:
        here = int(gdb.parse_and_eval("$pc"))
    except gdb.error:
        here = None
    nxt = here
    i = len(hist) - 1
    while i >= 0 and len(out) < want:
        insn = hist[i]
        i -= 1
        if not hasattr(insn, "pc"):
            # A gap: the history is broken here, the next insn starts anew.
            nxt = None
            continue
        if nxt is not None:
            m = _bts_mnemonic(insn.pc)
            if nxt != insn.pc + insn.size or m in ("syscall", "sysenter"):
                out.append((insn.pc, nxt, _bts_kind(insn.pc, nxt, insn.size)))
        nxt = insn.pc
    out.reverse()
    return out

class BtsLastBranch(gdb.Command):
    """Show the current thread's last branches: last-branch [N] (default 16)."""

    def __init__(self):
        super(BtsLastBranch, self).__init__("last-branch", gdb.COMMAND_STATUS)

    def invoke(self, arg, from_tty):
        arg = arg.strip()
        try:
            want = int(arg) if arg else 16
        except ValueError:
            raise gdb.GdbError("last-branch: '%s' is not a number of branches" % arg)
        rec = gdb.current_recording()
        if rec is None:
            raise gdb.GdbError("last-branch: no recording (use `record btrace`, or bts's stub)")
        branches = _bts_branches(rec, want)
        tid = gdb.selected_thread().ptid[1] or gdb.selected_thread().ptid[0]
        gdb.write("Last %d branches of thread %d, oldest first:\n" % (len(branches), tid))
        rows = []
        for k, (frm, to, kind) in enumerate(branches):
            rows.append(("%d" % (k - len(branches)), kind, _bts_side(frm), _bts_side(to)))
        wn = max([len(r[0]) for r in rows] or [0])
        wf = max([len(r[2]) for r in rows] or [0])
        wide = wf + max([len(r[3]) for r in rows] or [0]) > 140
        for n, kind, frm, to in rows:
            if wide:
                gdb.write("  %s  %-11s %s\n  %s  %-11s -> %s\n" % (n.rjust(wn), kind, frm, "".rjust(wn), "", to))
            else:
                gdb.write("  %s  %-11s %s  -> %s\n" % (n.rjust(wn), kind, frm.ljust(wf), to))

BtsLastBranch()
end
