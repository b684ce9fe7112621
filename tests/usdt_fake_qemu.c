/* A stand-in for a QEMU built with the dtrace trace backend (tests/test_usdt_probes.py).
 *
 * It carries QEMU's version string, USDT probes named and typed like QEMU's trace events
 * (provider qemu, each with a semaphore as dtrace -G generates), and exported functions named
 * like QEMU's memory-transaction and ioctl-inhibition functions. It waits until a tracer has
 * raised the semaphores, fires every probe with known values, and writes what it fired as JSON
 * lines to argv[1]. Built with -O2 (arguments in registers) and -O0 (on the stack). */
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#define SEMAPHORE(name) \
    __extension__ unsigned short qemu_##name##_semaphore __attribute__((unused, section(".probes")))
SEMAPHORE(ram_block_discard_range);
SEMAPHORE(vfio_listener_region_add_ram);
SEMAPHORE(vfio_listener_region_del);
SEMAPHORE(virtio_balloon_handle_output);

__attribute__((used)) const char qemu_version[] = "QEMU emulator version 8.1.0 (vmemtrace usdt test)\n";

static FILE *out;
static volatile int depth_seen;

__attribute__((noinline)) void ram_block_discard_range_probe(const char *rbname, void *hva, size_t length,
                                                             bool need_madvise, bool need_fallocate, int ret)
{
    if (qemu_ram_block_discard_range_semaphore)
        STAP_PROBE6(qemu, ram_block_discard_range, rbname, hva, length, need_madvise, need_fallocate, ret);
    fprintf(out, "{\"probe\": \"ram_block_discard_range\", \"rbname\": \"%s\", \"hva\": %lu, \"length\": %zu, "
            "\"ret\": %d}\n", rbname, (unsigned long)(uintptr_t)hva, length, ret);
}

__attribute__((noinline)) void vfio_add_ram(uint64_t iova_start, uint64_t iova_end, void *vaddr)
{
    if (qemu_vfio_listener_region_add_ram_semaphore)
        STAP_PROBE3(qemu, vfio_listener_region_add_ram, iova_start, iova_end, vaddr);
    fprintf(out, "{\"probe\": \"vfio_listener_region_add_ram\", \"iova_start\": %lu, \"iova_end\": %lu, "
            "\"vaddr\": %lu}\n", (unsigned long)iova_start, (unsigned long)iova_end, (unsigned long)(uintptr_t)vaddr);
}

__attribute__((noinline)) void vfio_del(uint64_t start, uint64_t end)
{
    if (qemu_vfio_listener_region_del_semaphore)
        STAP_PROBE2(qemu, vfio_listener_region_del, start, end);
    fprintf(out, "{\"probe\": \"vfio_listener_region_del\", \"start\": %lu, \"end\": %lu}\n",
            (unsigned long)start, (unsigned long)end);
}

__attribute__((noinline)) void balloon_output(const char *name, uint64_t gpa)
{
    if (qemu_virtio_balloon_handle_output_semaphore)
        STAP_PROBE2(qemu, virtio_balloon_handle_output, name, gpa);
    fprintf(out, "{\"probe\": \"virtio_balloon_handle_output\", \"name\": \"%s\", \"gpa\": %lu}\n",
            name, (unsigned long)gpa);
}

/* Named like QEMU's: a nested transaction commits once, at the outermost level. */
__attribute__((noinline)) void memory_region_transaction_commit(int nested)
{
    if (nested > 0)
        memory_region_transaction_commit(nested - 1);
    depth_seen++;
}

/* Different bodies: gcc -O2 folds identical functions into one address. */
static volatile int inhibited;
__attribute__((noinline)) void accel_ioctl_inhibit_begin(void) { inhibited = 1; }
__attribute__((noinline)) void accel_ioctl_inhibit_end(void) { inhibited = 0; depth_seen++; }

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    out = fopen(argv[1], "w");
    if (!out)
        return 2;
    /* The tracer attaches after our exec; it raises every semaphore it attached. */
    struct timespec tick = {0, 10 * 1000 * 1000};
    for (int i = 0; i < 3000; i++) {
        if (qemu_ram_block_discard_range_semaphore && qemu_vfio_listener_region_add_ram_semaphore &&
            qemu_vfio_listener_region_del_semaphore && qemu_virtio_balloon_handle_output_semaphore)
            break;
        nanosleep(&tick, NULL);
    }
    if (!qemu_ram_block_discard_range_semaphore) {
        fprintf(stderr, "usdt_fake_qemu: no tracer raised the semaphores\n");
        return 1;
    }
    static const char *blocks[] = {"pc.ram", "mem1", "/objects/a-ram-block-name-with-47-characters/x1"  /* the longest kept whole */};
    for (int i = 0; i < 50; i++) {
        uint64_t base = 0x7f0000000000ull + ((uint64_t)i << 21);
        ram_block_discard_range_probe(blocks[i % 3], (void *)(uintptr_t)(base + 0x1000), 4096u << (i % 5),
                                      i & 1, (i & 2) != 0, i % 7 == 0 ? -22 : 0);
        vfio_add_ram(0x100000ull * i, 0x100000ull * i + 0xfffff, (void *)(uintptr_t)base);
        vfio_del(0x100000ull * i, 0x100000ull * i + 0xfffff);
        balloon_output("pc.ram", 0x1000ull * (i + 1));
    }
    memory_region_transaction_commit(3);
    memory_region_transaction_commit(0);
    accel_ioctl_inhibit_begin();
    accel_ioctl_inhibit_end();
    fprintf(out, "{\"probe\": \"commits\", \"outermost\": 2, \"inhibits\": 1}\n");
    fclose(out);
    return 0;
}
