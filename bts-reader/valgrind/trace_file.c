/* bts's Valgrind tool: the code the client ran (its executable mappings,
   kept after munmap, and a copy of every page translated), and the trace
   file written at the end: the threads' records as 24-byte BTS records,
   the mappings, the pages and the command line, which bts reads. */

#include "bts.h"

/* ------------------------------------------------------------------ */
/* Executable mappings (kept after munmap) and translated code pages  */

#define MAX_MAPS 4096
typedef struct { Addr start, end; ULong offset; HChar path[512]; } Map;
static Map maps[MAX_MAPS];
static Int nmaps;

void bts_note_map(Addr a, SizeT len, Bool rr, Bool ww, Bool xx, ULong di)
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

void bts_cache_code(Addr a, UInt len)
{
   for (Addr p = a & ~(PAGE - 1); p < a + len; p += PAGE) cache_page(p);
}

/* ------------------------------------------------------------------ */
/* The file                                                           */

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
   record's are its kind, time and task). */
static void put_rec(const Record *r)
{
   put64(r->from);
   if (r->from >= ESCAPE) {
      put64(r->to >> 32);
      put64(r->to & 0xffffffffULL);
   } else {
      put64(r->to);
      put64(0);
   }
}

/* A thread's part of the file: its header, then the newest records it
   keeps, oldest first. The ring is read back from its newest slot, while
   a record lies whole in the slots no later record (or the scratch place
   past the index) can have overwritten. */
static void put_buf(const Buf *b, Addr last_pc)
{
   ULong written = b->slots - b->extra;
   /* The slots the ring holds whole: all but the longest record's worth
      past the index (written there before a conditional exit is decided),
      and its scratch. */
   ULong whole = bts_ring_mask + 1 - LONGEST - SCRATCH;
   ULong oldest = b->slots > whole ? b->slots - whole + 1 : 1;
   ULong room = b->max < whole ? b->max : whole;
   ULong *tags = VG_(malloc)("bts.tags", room * sizeof *tags); /* max >= 1 */
   ULong count = 0;
   Record r;
   for (ULong a = b->slots; a >= oldest && count < b->max; count++) {
      UInt len = bts_record_at(b, a, &r);
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
      bts_record_at(b, tags[k - 1], &r);
      put_rec(&r);
   }
   VG_(free)(tags);
}

Bool bts_write_trace(const HChar *prefix)
{
   HChar name[1024];
   Int pid = VG_(getpid)();
   for (Int n = 0; n < 1000 && out_fd < 0; n++) {
      VG_(snprintf)(name, sizeof name, "%s.%d.%d", prefix, pid, n);
      SysRes r = VG_(open)(name, VKI_O_CREAT | VKI_O_EXCL | VKI_O_WRONLY, 0600);
      if (!sr_isError(r)) out_fd = sr_Res(r);
   }
   if (out_fd < 0) return False;
   ULong nthreads = bts_nretired;
   for (ThreadId t = 1; t < VG_N_THREADS; t++) if (bts_bufs[t].base) nthreads++;
   put("BTSVG003", 8);
   put64((ULong)pid);
   put64((ULong)bts_bufs[VG_(get_running_tid)()].os_tid);
   put64(nthreads);
   put64((ULong)nmaps);
   put64((ULong)npages);
   for (UInt r = 0; r < bts_nretired; r++) put_buf(&bts_retired[r], bts_retired[r].last_pc);
   for (ThreadId t = 1; t < VG_N_THREADS; t++)
      if (bts_bufs[t].base) /* a thread that exited has its last pc saved */
         put_buf(&bts_bufs[t], bts_bufs[t].last_pc ? bts_bufs[t].last_pc : VG_(get_IP)(t));
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
   return True;
}
