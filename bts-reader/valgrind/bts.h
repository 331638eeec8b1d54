/* What the parts of bts's Valgrind tool share.
 *
 *   ring.c        the per-thread rings, the branch sites, the cursor
 *   instrument.c  which instructions branch, and the IR that records them
 *   trace_file.c  the code seen (mappings and pages) and the file written
 *   bts_main.c    the tool: options, Valgrind's events, start and end
 */
#ifndef BTS_H
#define BTS_H

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
/* ring.c                                                             */

/* A thread's ring is a circle of 8-byte words. A record is one to three
   words, and its last word, its tag, says what it is, so that the ring is
   read backwards from its newest end:
     SITE + n             a direct branch: bts_sites[n] (one word)
     to, ISITE + n        an indirect branch from bts_sites[n].from (two words)
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
#define LONGEST 3            /* words of the longest record */
#define MAX_RECORDS (1ULL << 32) /* a ring keeps at most (the index needs room) */
#define INDIRECT (~0ULL)     /* the `to` of an indirect branch's site */

/* The direct branches met in translation, numbered: (from, to) is known
   then, so the generated code stores the number alone. Each pair is
   numbered once (a hash set of numbers + 1), however often its code is
   translated again. An indirect branch's site is (from, INDIRECT). Past
   MAX_SITES, new ones are stored in three words. */
typedef struct { Addr from, to; } Site;
extern Site *bts_sites;

/* The number of the site (from, to), or -1 past MAX_SITES. */
Long bts_site_number(Addr from, Addr to);

/* The ring's words are a power of two (bts_ring_mask + 1, the same for every
   thread), more than the records kept. A record of len words written
   when the index was w has its tag at base[(w + len) & bts_ring_mask] and
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

extern Buf *bts_bufs;          /* VG_N_THREADS of them */
extern ULong bts_ring_mask;    /* ring words - 1, the same for every thread */
extern Long bts_records_per_thread; /* --bts-records, as given */
extern Buf *bts_retired;       /* buffers of threads whose id was given again */
extern UInt bts_nretired;

/* Sizes the rings (before any translation: the mask is a constant of
   the generated code) and allocates the threads' buffers. */
void bts_ring_init(void);
Buf *bts_buf_of(ThreadId tid);
/* Sets the buffer of thread `tid` aside, whole: its id goes to a new thread. */
void bts_retire(ThreadId tid);
/* The length of the record whose tag is the thread's n-th word written
   (from 1), and its words, tag last; 0 for a word that is no tag. */
UInt bts_record_at(const Buf *b, ULong n, ULong w[3]);

/* The cursor of the thread running client code: its write index and its
   ring. The index's low 40 bits count words written (modulo 2^40, which
   is all a place in the ring needs), its high 24 the words written past
   the first of each record since the cursor was loaded: an indirect
   branch adds 2 + 2^40 to it, with no second count to keep. stop_client
   folds the index into the Buf's full counts. The extra count cannot
   outgrow its 24 bits in between: Valgrind leaves client code after
   100000 event checks (a constant of its build), a superblock entered
   without one (a forward direct jump) writes direct records, of no extra
   words, unless past MAX_SITES, and every indirect branch passes one.
   The low 40 bits start below the ring's size at each load, so they
   never carry into the extra count. It lives in the
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
extern ThreadId bts_cursor_tid; /* whose cursor is loaded; 0 when none is */
void bts_cursor_load(ThreadId tid);
void bts_cursor_store(void);
/* A record written from C: a context record (from = ESCAPE | kind, to the
   time, flags the task) or a branch. */
void bts_push(ThreadId tid, ULong from, ULong to, ULong flags);

/* ------------------------------------------------------------------ */
/* instrument.c                                                       */

IRSB *bts_instrument(VgCallbackClosure *closure, IRSB *in, const VexGuestLayout *layout,
                     const VexGuestExtents *vge, const VexArchInfo *archinfo_host,
                     IRType gWordTy, IRType hWordTy);

/* ------------------------------------------------------------------ */
/* trace_file.c                                                       */

/* Valgrind's new_mem_startup and new_mem_mmap: executable mappings are kept. */
void bts_note_map(Addr a, SizeT len, Bool rr, Bool ww, Bool xx, ULong di);
/* Keeps a copy of the pages of code about to be translated. */
void bts_cache_code(Addr a, UInt len);
/* Writes the trace to PREFIX.PID.N (the first N free); False if it cannot. */
Bool bts_write_trace(const HChar *prefix);

#endif
