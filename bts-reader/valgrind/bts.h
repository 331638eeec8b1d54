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
#include "libvex_guest_amd64.h"

/* ------------------------------------------------------------------ */
/* ring.c                                                             */

/* A thread's ring is a circle of 2-byte slots. A record is one to nine
   slots, and its newest slot, its tag, says what it is (by its top bits),
   so that the ring is read backwards from its newest end (site n is
   bts_sites[n - bts_site_base]):
     0nnn nnnn nnnn nnnn    a direct branch, site n < 2^15 (1 slot)
     lo, 10hh hhhh hhhh hhhh
                            a direct branch, n = h << 16 | lo (2 slots)
     to, lo, 110h hhhh hhhh hhhh
                            an indirect branch from bts_sites[n].from, to
                            in four slots (6 slots)
     payload, 1111 0000 0000 kkkk
                            a context record of kind k: the time in the
                            payload's high half, the task's id in its low
                            half (5 slots)
     from, to, 1110 0000 0000 0000
                            any other branch (9 slots)
   Every store is of 8 bytes: a tag is stored with the slot below it (or
   with none) and the slots past it, which are scratch (SCRATCH). A direct
   branch in one slot keeps the default ring (3156 records at 2.5 slots)
   in 16 KiB: the ring's footprint in the L1 cache is much of what a
   record costs a program whose own data crowds the cache (with 8-byte
   words, gzip ran 4% faster in a ring of 1 KiB than in 32). gzip ran 1
   to 4% faster than with 8-byte words (32 KiB); the loops of the bench
   were within the noise, either way. The file gets 24-byte BTS records
   (put_rec). */
typedef UShort Slot;
#define TAG_LONG 0x8000U     /* 10..: a direct branch past 2^15 */
#define TAG_INDIRECT 0xC000U /* 110.: an indirect branch */
#define TAG_RAW 0xE000U      /* 1110: any other branch */
#define TAG_ESCAPE 0xF000U   /* 1111: a context record */
#define MAX_SITES (1U << 24) /* then raw records: a program making code never ends */
#define LONGEST 9            /* slots of the longest record */
#define SCRATCH 3            /* slots past a tag its store overwrites */
/* The file's words for a record's kind, as put_rec and bts_push take them:
   a context record's from is ESCAPE | kind. */
#define ESCAPE (~0xFULL)
#define MAX_RECORDS (1ULL << 26) /* a ring keeps at most (the index needs room) */
#define INDIRECT (~0ULL)     /* the `to` of an indirect branch's site */

/* The direct branches met in translation, numbered: (from, to) is known
   then, so the generated code stores the number alone. Each pair is
   numbered once (a hash set of numbers + 1), however often its code is
   translated again. An indirect branch's site is (from, INDIRECT). Past
   MAX_SITES, new ones are stored whole, as raw records. */
typedef struct { Addr from, to; } Site;
extern Site *bts_sites;

/* The number of the site (from, to), or -1 past MAX_SITES. */
Long bts_site_number(Addr from, Addr to);
/* The first site's number (--bts-site-base, 0 but in tests). */
extern Long bts_site_base;

/* How a record is written: its length in slots, and its stores, each of
   8 bytes at a slot `at` below its tag (0: at the tag), of `value` or, for
   `is_to`, of the branch's destination (an IR expression in generated
   code). The generated code (instrument.c) and bts_push store by it, so
   the two cannot disagree; bts_record_at reads it back. */
typedef struct { Int at; Bool is_to; ULong value; } Store;
typedef struct { UInt len, nstores; Store store[3]; } Layout;
/* The layout of a branch from `from` with site number `site` (-1: none,
   a raw record, whose `to` is the branch's: `is_to`). */
Layout bts_branch_layout(Long site, Bool indirect, Addr from);

/* The ring's slots are a power of two (bts_ring_mask + 1, the same for
   every thread), two and a half times the records kept, and more. A
   record of len slots written when the index was w has its tag at
   base[(w + len) & bts_ring_mask] and its other slots just below the tag,
   unmasked: a record whose tag falls at the ring's start spills below
   base[0], into room
   that exists (LONGEST - 1 slots), as a tag near the end writes its
   scratch past the end (SCRATCH slots). So the generated code masks the
   index it has just advanced, once, and the slots past the index (where
   the next record goes) never hold a kept record: the inline writer stores
   a record there before it knows whether the branch is taken. */
typedef struct {
   Slot *base;      /* the ring */
   ULong slots;     /* slots written */
   ULong extra;     /* slots written past the first of each record */
   ULong max;       /* records kept */
   ULong contexts;  /* context records written (the rest are branches) */
   Int   os_tid;
   Addr  syscall_from; /* a system call instruction about to run */
   Addr  last_pc;      /* where the thread was when it exited */
} Buf;

extern Buf *bts_bufs;          /* VG_N_THREADS of them */
extern ULong bts_ring_mask;    /* ring slots - 1, the same for every thread */
extern Long bts_records_per_thread; /* --bts-records, as given */
extern Buf *bts_retired;       /* buffers of threads whose id was given again */
extern UInt bts_nretired;

/* Sizes the rings (before any translation: the mask is a constant of
   the generated code) and allocates the threads' buffers. */
void bts_ring_init(void);
Buf *bts_buf_of(ThreadId tid);
/* Sets the buffer of thread `tid` aside, whole: its id goes to a new thread. */
void bts_retire(ThreadId tid);

/* A record read back, in the words the file's record is made of. */
typedef struct {
   ULong from;     /* ESCAPE | kind for a context record */
   ULong to;       /* for a context record, its payload */
} Record;
/* The length of the record whose tag is the thread's n-th slot written
   (from 1), and the record; 0 for a slot that is no tag. */
UInt bts_record_at(const Buf *b, ULong n, Record *r);

/* The cursor of the thread running client code: its write index and its
   ring. The index's low 30 bits count slots written (modulo 2^30, which
   is all a place in the ring needs), its high 34 the slots written past
   the first of each record since the cursor was loaded: an indirect
   branch adds 6 + 5 * 2^30 to it, with no second count to keep. stop_client
   folds the index into the Buf's full counts. Valgrind leaves client code
   after 100000 event checks (a constant of its build), and every backward
   branch and every indirect one passes one: between two, only a forward
   path, each superblock above the last, of at most nine slots a record
   (two but past MAX_SITES). So the low count cannot wrap before the fold
   unless a single pass forward takes more than 800 branches, which no
   program's code does. The low 30
   bits start below the ring's size (at most 2^28 slots) at each load, so
   they never carry into the extra count. It lives in the
   thread's first shadow guest state (no shadow values are kept here), so
   the generated code reads and writes it next to the registers, with no
   address to build. Valgrind runs one thread at a time; start_client
   loads a thread's cursor from its Buf and stop_client puts it back, so
   between them the cursor is the truth. (Valgrind copies shadow state
   into a new thread and into a signal frame and back: those copies are
   never read, as start_client always loads the cursor afresh.) */
typedef struct { ULong index; Slot *base; } Cursor;
#define CURSOR_OFFSET 16 /* in the shadow state: the places of guest RAX, RCX */
#define LOW ((1ULL << 30) - 1)
#define EXTRA (1ULL << 30) /* one extra slot, in the index */
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
