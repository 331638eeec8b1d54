/* bts: a Valgrind tool that plays the BTS hardware.
 *
 * Every taken branch of the client is written into its thread's circular
 * buffer, the way the Debug Store would (in one to nine 2-byte slots; the
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
 * This file is the tool itself: its options, the events Valgrind reports
 * (system calls, signals, thread switches), its start and its end; bts.h
 * names the other parts. Everything else (reading, decoding, reporting)
 * is done in Rust.
 */

#include "bts.h"

/* ------------------------------------------------------------------ */
/* Options                                                            */

static const HChar *out_prefix = "bts-valgrind";

static Bool bts_process_cmd_line_option(const HChar *arg)
{
   if VG_STR_CLO(arg, "--bts-out", out_prefix) {}
   else if VG_INT_CLO(arg, "--bts-records", bts_records_per_thread) {}
   else if VG_BINT_CLO(arg, "--bts-site-base", bts_site_base, 0, MAX_SITES) {}
   else return False;
   return True;
}

static void bts_print_usage(void)
{
   VG_(printf)("    --bts-out=PREFIX          write the trace to PREFIX.PID.N\n"
               "    --bts-records=N           records per thread buffer\n");
}

static void bts_print_debug_usage(void)
{
   VG_(printf)("    --bts-site-base=N         number branch sites from N, so that a test\n"
               "                              meets the ring's long and raw records\n");
}

/* ------------------------------------------------------------------ */
/* Valgrind's events                                                  */

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
   Buf *b = bts_buf_of(tid);
   if (!b->syscall_from) return;
   /* Valgrind runs exit and exit_group itself and still calls us back. */
   if (no == 60 || no == 231) {
      b->syscall_from = 0;
      return;
   }
   bts_push(tid, b->syscall_from, VG_(get_IP)(tid), 0);
   b->syscall_from = 0;
}

static void pre_deliver_signal(ThreadId tid, Int sig, Bool alt)
{
   /* Only for a signal with a handler; 0 and 1 are SIG_DFL and SIG_IGN. */
   if (sig > 0 && sig < 65 && handlers[sig] > 1)
      bts_push(tid, VG_(get_IP)(tid), handlers[sig], 0);
}

/* Valgrind runs one thread at a time and stops it at every system call
   and time slice. A switch to another thread is what a context switch is
   to the hardware: only then "departs" (old thread) and "arrives" (new
   thread) records are written, as the ptrace recorders write them when a
   thread changes CPU. So a buffer holds as many branches here as there. */
static ThreadId last_running;

static void start_client(ThreadId tid, ULong blocks)
{
   Buf *b = bts_buf_of(tid);
   if (!b->os_tid) b->os_tid = VG_(gettid)();
   if (tid != last_running) {
      ULong now = VG_(read_millisecond_timer)();
      if (last_running != 0 && bts_bufs[last_running].base)
         bts_push(last_running, ESCAPE | 3, now, (ULong)bts_bufs[last_running].os_tid);
      bts_push(tid, ESCAPE | 2, now, (ULong)b->os_tid);
      last_running = tid;
   }
   bts_cursor_load(tid);
}

static void stop_client(ThreadId tid, ULong blocks)
{
   bts_cursor_store();
}

/* Valgrind gives a thread id again to a new thread once its thread has
   exited: the old thread's buffer is set aside, whole, and written out
   with the others, so that two threads' branches never share one. */

static void thread_exits(ThreadId tid)
{
   bts_bufs[tid].last_pc = VG_(get_IP)(tid);
}

static void thread_created(ThreadId parent, ThreadId child)
{
   bts_retire(child);
   if (last_running == child) last_running = 0;
}

/* ------------------------------------------------------------------ */
/* The end                                                            */

static void bts_fini(Int exitcode)
{
   /* For the log: how the process ended when no signal ended it. */
   VG_(umsg)("bts: exit code %d\n", exit_status);
   /* Valgrind calls stop_client after every run of client code, a fault's
      included, so no cursor is loaded by now. Were one loaded, only the
      running thread's shadow state could be read for it. */
   if (bts_cursor_tid == VG_(get_running_tid)()) bts_cursor_store();
   if (!bts_write_trace(out_prefix))
      VG_(umsg)("bts: cannot write the trace to %s.%d.*\n", out_prefix, VG_(getpid)());
}

/* ------------------------------------------------------------------ */
/* The start                                                          */

static void bts_post_clo_init(void)
{
   /* Every taken branch must end a superblock, leave it at an exit, or
      run into the next copy of a loop VEX unrolled: no chasing, whatever
      the command line said. (Chasing in VEX 3.19 also turns an if-then
      into straight code with guarded effects, where a conditional branch
      leaves no trace in the IR.) */
   VG_(clo_vex_control).guest_chase = False;
   bts_ring_init();
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
   VG_(track_new_mem_startup)(bts_note_map);
   VG_(track_new_mem_mmap)(bts_note_map);
   VG_(track_pre_deliver_signal)(pre_deliver_signal);
   VG_(track_start_client_code)(start_client);
   VG_(track_stop_client_code)(stop_client);
   VG_(track_pre_thread_ll_create)(thread_created);
   VG_(track_pre_thread_ll_exit)(thread_exits);
   VG_(needs_syscall_wrapper)(pre_syscall, post_syscall);
}

VG_DETERMINE_INTERFACE_VERSION(bts_pre_clo_init)
