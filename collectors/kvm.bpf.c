/* kvm: KVM_SET_USER_MEMORY_REGION(2) decoded from user memory, and the dirty-log harvests
 * (KVM_GET_DIRTY_LOG, KVM_CLEAR_DIRTY_LOG, KVM_RESET_DIRTY_RINGS). Called from ioctl.bpf.c. */
#include "kvm.h"


struct vmt_kvm_region2_head {  /* the first 44 bytes of kvm_userspace_memory_region2 */
    u32 slot, flags;
    u64 guest_phys_addr, memory_size, userspace_addr, guest_memfd_offset;
    u32 guest_memfd;
};
struct vmt_kvm_dirty_log { u32 slot, padding; u64 bitmap; };
struct vmt_kvm_clear_dirty_log { u32 slot, num_pages; u64 first_page, bitmap; };

static __always_inline void kvm_ioctl_enter(u32 fd, u32 cmd, u64 arg)
{
    if (cmd != KVM_SET_USER_MEMORY_REGION && cmd != KVM_SET_USER_MEMORY_REGION2 &&
        cmd != KVM_GET_DIRTY_LOG && cmd != KVM_CLEAR_DIRTY_LOG && cmd != KVM_RESET_DIRTY_RINGS)
        return;
    struct kvm_rec r = {};
    VMT_FILL_ENVELOPE(&r);
    r.cmd = cmd;
    r.fd = fd;
    r.gmem_fd = -1;
    if (cmd == KVM_SET_USER_MEMORY_REGION || cmd == KVM_SET_USER_MEMORY_REGION2) {
        struct vmt_kvm_region2_head u = {};
        if (cmd == KVM_SET_USER_MEMORY_REGION)
            bpf_probe_read_user(&u, 32, (void *)arg);
        else
            bpf_probe_read_user(&u, 44, (void *)arg);
        r.slot = u.slot;
        r.flags = u.flags;
        r.gpa = u.guest_phys_addr;
        r.size = u.memory_size;
        r.hva = u.userspace_addr;
        if (cmd == KVM_SET_USER_MEMORY_REGION2) {
            r.gmem_offset = u.guest_memfd_offset;
            r.gmem_fd = u.guest_memfd;
        }
    } else if (cmd == KVM_GET_DIRTY_LOG) {
        struct vmt_kvm_dirty_log u = {};
        bpf_probe_read_user(&u, sizeof(u), (void *)arg);
        r.slot = u.slot;
    } else if (cmd == KVM_CLEAR_DIRTY_LOG) {
        struct vmt_kvm_clear_dirty_log u = {};
        bpf_probe_read_user(&u, sizeof(u), (void *)arg);
        r.slot = u.slot;
        r.flags = u.num_pages;
        r.gpa = u.first_page;
    }
    kvm_hold(&r);
}

static __always_inline void kvm_ioctl_exit(long ret)
{
    kvm_finish(ret);
}
