#!/bin/sh
# spotkeeper boot script (cloud-init user data), generated for box @BOX@.
#
# It contains no credentials: spotkeeper attaches the volumes from outside;
# this script only waits for them to appear. Comment lines are dropped when
# spotkeeper generates the user data (EC2 takes at most 16 KiB of it).
#
# - data volume: wait for the device, create a filesystem only when the volume
#   is known to be new (spotkeeper created it empty and no box has used it
#   yet), blkid positively finds no filesystem and its first MiB is zeros;
#   never because blkid failed. Then mount it (and record it in /etc/fstab
#   with nofail). A volume that is not known to be new and has no filesystem
#   is left untouched and the boot script stops before the user's data.
# - persistent root: find the volume's root filesystem (bootable volumes are
#   partitioned: the partition holding /sbin/init), give it an identity of
#   its own when it shares one with a disk of the instance (a volume made
#   from the image's snapshot carries the image disk's filesystem UUID,
#   label and partition UUID, so the kernel's root=PARTUUID=/LABEL= could
#   pick either), install a small init in front of the image's own
#   (/sbin/init), then reboot; from then on every boot mounts the volume's
#   partition by device and pivot_roots into it, keeping the image's disk
#   under /old-root.
# - with `agent = true`: a systemd unit for `spotkeeper agent` (the hook's
#   runner on the instance; the binary is put at /usr/local/bin/spotkeeper by
#   the daemon, or the image has it; the unit retries until it is there).
# - the user's own user data runs last, after the volume is mounted.
#
# Every setting can be overridden from the environment (the tests do).
set -eu

: "${SK_DATA_VOLUME:=@DATA_VOLUME@}"
: "${SK_DATA_DEVICE:=@DATA_DEVICE@}"
: "${SK_DATA_MOUNT:=@DATA_MOUNT@}"
: "${SK_DATA_NEW:=@DATA_NEW@}"
: "${SK_ROOT_VOLUME:=@ROOT_VOLUME@}"
: "${SK_ROOT_DEVICE:=@ROOT_DEVICE@}"
: "${SK_USER_SCRIPT:=@USER_SCRIPT@}"
: "${SK_AGENT:=@AGENT@}"
: "${SK_AGENT_HOOK:=@AGENT_HOOK@}"
: "${SK_AGENT_TIMEOUT:=@AGENT_TIMEOUT@}"
: "${SK_SYSTEMCTL:=systemctl}"
: "${SK_ROOTFS:=}"
: "${SK_SYS_BLOCK:=/sys/block}"
: "${SK_DEV_DIR:=/dev}"
: "${SK_BYID_DIR:=/dev/disk/by-id}"
: "${SK_WAIT_SECONDS:=900}"
: "${SK_REBOOT:=reboot}"
: "${SK_STATE_DIR:=/var/lib/spotkeeper}"

log() { echo "spotkeeper-boot: $*" >&2; }

# What the boot script and the init it installs share (the init runs as
# PID 1, before udev: it finds devices through sysfs alone).
boot_lib() {
    cat <<'LIB'
# Prints the block device of EBS volume $1 (vol-…), requested as device $2
# (/dev/sdf). On Nitro instances EBS volumes are NVMe devices whose serial is
# the volume id without the dash; on Xen they keep the requested name, as
# /dev/sdX or /dev/xvdX.
find_device() {
    want=$(echo "$1" | tr -d '-')
    for serial in "$SK_SYS_BLOCK"/nvme*/device/serial; do
        [ -r "$serial" ] || continue
        if [ "$(tr -d ' \n' < "$serial")" = "$want" ]; then
            echo "$SK_DEV_DIR/$(basename "$(dirname "$(dirname "$serial")")")"
            return 0
        fi
    done
    if [ -e "$SK_BYID_DIR/nvme-Amazon_Elastic_Block_Store_$want" ]; then
        readlink -f "$SK_BYID_DIR/nvme-Amazon_Elastic_Block_Store_$want"
        return 0
    fi
    name=$(basename "$2")
    for dev in "$SK_DEV_DIR/$name" "$SK_DEV_DIR/xvd${name#sd}"; do
        if [ -b "$dev" ]; then
            echo "$dev"
            return 0
        fi
    done
    return 1
}

# The partitions of disk $1 (as sysfs lists them: /sys/block/nvme1n1/nvme1n1p1),
# in partition-number order, then the disk itself (an unpartitioned volume).
candidates() {
    disk=$(basename "$1")
    for p in "$SK_SYS_BLOCK/$disk/$disk"*; do
        [ -r "$p/partition" ] && echo "$(cat "$p/partition") $SK_DEV_DIR/$(basename "$p")"
    done | sort -n | while read -r _ dev; do echo "$dev"; done
    echo "$1"
}

# Mounts at $2, read-only as the kernel mounts a root, the partition of disk
# $1 that holds a system (/sbin/init, a link on most distributions) and
# prints it; nothing stays mounted when none does.
mount_system() {
    for part in $(candidates "$1"); do
        mount -o ro "$part" "$2" 2>/dev/null || continue
        if [ -L "$2/sbin/init" ] || [ -e "$2/sbin/init" ]; then
            echo "$part"
            return 0
        fi
        umount "$2"
    done
    return 1
}

# "partition N of DISK" or "DISK (no partition table)", for the console.
describe() {
    if [ "$1" = "$2" ]; then
        echo "$1 (no partition table)"
    else
        echo "$2, partition $(cat "$SK_SYS_BLOCK/$(basename "$1")/$(basename "$2")/partition") of $1"
    fi
}
LIB
}
eval "$(boot_lib)"

# Waits until volume $1 is attached, then prints its device.
wait_device() {
    waited=0
    until find_device "$1" "$2"; do
        if [ "$waited" -ge "$SK_WAIT_SECONDS" ]; then
            log "volume $1 did not appear within ${SK_WAIT_SECONDS}s"
            return 1
        fi
        [ "$waited" -eq 0 ] && log "waiting for volume $1 to be attached"
        sleep 2
        waited=$((waited + 2))
    done
}

# Stops the boot script: the volume stays as it is, unmounted, and the box's
# own user data does not run (it would write to the wrong disk).
refuse() {
    log "$1"
    log "the data volume $SK_DATA_VOLUME is not mounted; the box's own user data does not run"
    exit 1
}

# Whether the first MiB of $1 reads as zeros (nothing was ever written there:
# every filesystem and volume manager puts its label in it).
never_written() {
    [ -z "$(head -c 1048576 "$1" | tr -d '\000' | head -c 1)" ]
}

# The device to mount of data volume $1: the volume itself, or, when it
# carries a partition table and no filesystem of its own (a volume made by
# hand), its first partition that has a filesystem.
data_filesystem() {
    if [ -n "$(blkid -p -s TYPE -o value "$1" 2>/dev/null)" ]; then
        echo "$1"
        return 0
    fi
    for part in $(candidates "$1"); do
        if [ "$part" != "$1" ] && [ -n "$(blkid -p -s TYPE -o value "$part" 2>/dev/null)" ]; then
            log "$(describe "$1" "$part") holds the data volume's filesystem"
            echo "$part"
            return 0
        fi
    done
    echo "$1"
}

setup_data_volume() {
    dev=$(wait_device "$SK_DATA_VOLUME" "$SK_DATA_DEVICE")
    found=0
    # -p: probe the device itself, never blkid's cache (a device name may
    # have belonged to another volume before).
    blkid -p "$dev" > /dev/null 2>&1 || found=$?
    case "$found" in
    0)
        dev=$(data_filesystem "$dev")
        log "$dev ($SK_DATA_VOLUME) has a filesystem; keeping it"
        ;;
    2)
        # blkid looked and found nothing it knows.
        if [ "$SK_DATA_NEW" != 1 ]; then
            refuse "$dev ($SK_DATA_VOLUME) has no filesystem blkid knows, but it is not known to be new; not formatting it (make a filesystem on it by hand if it really is empty)"
        fi
        if ! never_written "$dev"; then
            refuse "$dev ($SK_DATA_VOLUME) is new but holds data blkid does not recognise; not formatting it"
        fi
        log "$dev ($SK_DATA_VOLUME) is new and blank; creating an ext4 filesystem"
        mkfs.ext4 -q -L spotkeeper-data "$dev"
        ;;
    *)
        refuse "blkid could not read $dev ($SK_DATA_VOLUME) (exit $found); not formatting it"
        ;;
    esac
    mkdir -p "$SK_DATA_MOUNT"
    if ! grep -qs " $SK_DATA_MOUNT " /proc/self/mounts; then
        mount "$dev" "$SK_DATA_MOUNT"
    fi
    uuid=$(blkid -p -s UUID -o value "$dev" || true)
    if [ -n "$uuid" ] && [ -w "$SK_ROOTFS/etc/fstab" ] && ! grep -qs "UUID=$uuid" "$SK_ROOTFS/etc/fstab"; then
        echo "UUID=$uuid $SK_DATA_MOUNT auto defaults,nofail 0 2" >> "$SK_ROOTFS/etc/fstab"
    fi
    log "data volume $SK_DATA_VOLUME mounted at $SK_DATA_MOUNT"
}

# The identities of block device $1 another disk must not share: filesystem
# UUID, label and partition UUID, one "KEY=value" per line.
identities() {
    blkid -p -o export "$1" 2>/dev/null | grep -E '^(UUID|LABEL|PART_ENTRY_UUID)=.' || true
}

# Whether partition $2 of disk $1 shares an identity with a partition or a
# disk outside $1 (the image's disk, above all).
shares_identity() {
    mine=$(identities "$2")
    [ -n "$mine" ] || return 1
    for sys in "$SK_SYS_BLOCK"/*; do
        other=$(basename "$sys")
        [ "$SK_DEV_DIR/$other" = "$1" ] && continue
        for p in "$sys/$other"* "$sys"; do
            [ -r "$p/dev" ] || continue
            for id in $(identities "$SK_DEV_DIR/$(basename "$p")"); do
                if echo "$mine" | grep -qx "$id"; then
                    log "$2 has $id, as $SK_DEV_DIR/$(basename "$p") has"
                    return 0
                fi
            done
        done
    done
    return 1
}

# Gives the volume's root filesystem $2 (on disk $1) a new UUID and label and
# its partition a new partition UUID, and points the volume's /etc/fstab at
# the new UUID, so that nothing can mistake the image's disk for the volume
# or the volume for the image's disk. Mounts nothing at the end.
reidentify() {
    new=$(cat /proc/sys/kernel/random/uuid)
    kind=$(blkid -p -s TYPE -o value "$2")
    case "$kind" in
    ext2 | ext3 | ext4)
        # tune2fs rewrites the metadata checksums under a new UUID and
        # wants a freshly checked filesystem for it (e2fsck: 1 = repaired).
        e2fsck -fy "$2" > /dev/null 2>&1 || [ $? -le 1 ]
        tune2fs -U "$new" -L sk-root "$2" > /dev/null
        ;;
    xfs) xfs_admin -U "$new" -L sk-root "$2" > /dev/null ;;
    *)
        log "cannot give the $kind filesystem on $2 a new identity"
        return 1
        ;;
    esac
    if [ "$2" != "$1" ]; then
        table=$(blkid -p -s PTTYPE -o value "$1")
        number=$(cat "$SK_SYS_BLOCK/$(basename "$1")/$(basename "$2")/partition")
        if ! command -v sfdisk > /dev/null; then
            log "sfdisk (util-linux/fdisk) is missing: cannot give partition $number of $1 a partition UUID of its own"
            return 1
        fi
        case "$table" in
        gpt) sfdisk -q --part-uuid "$1" "$number" "$(cat /proc/sys/kernel/random/uuid)" ;;
        dos) sfdisk -q --disk-id "$1" "0x$(tr -d '-' < /proc/sys/kernel/random/uuid | head -c 8)" ;;
        esac
    fi
    mnt=$(mktemp -d)
    mount "$2" "$mnt"
    if [ -f "$mnt/etc/fstab" ]; then
        awk -v id="UUID=$new" '$1 !~ /^#/ && $2 == "/" { $1 = id } { print }' "$mnt/etc/fstab" > "$mnt/etc/fstab.spotkeeper"
        mv "$mnt/etc/fstab.spotkeeper" "$mnt/etc/fstab"
    fi
    umount "$mnt"
    rmdir "$mnt"
    log "gave $2 a new identity (filesystem UUID $new, label sk-root, new partition UUID); its /etc/fstab mounts / by that UUID"
}

# The init placed in front of the image's own. It runs as PID 1 (before
# udev, hence the sysfs look-up), mounts the volume's root partition by
# device, and falls back to the image's init, saying why on the console, if
# the volume never shows up or holds no system, so the box still boots and
# can be inspected.
write_shim() {
    {
        echo '#!/bin/sh'
        echo "# spotkeeper persistent root: mount $SK_ROOT_VOLUME and chain-load its init."
        echo "SK_ROOT_VOLUME=$SK_ROOT_VOLUME"
        echo "SK_ROOT_DEVICE=$SK_ROOT_DEVICE"
        boot_lib
        cat <<'SHIM'
: "${SK_SYS_BLOCK:=/sys/block}"
: "${SK_DEV_DIR:=/dev}"
: "${SK_BYID_DIR:=/dev/disk/by-id}"
: "${SK_NEWROOT:=/mnt/spotkeeper-root}"
: "${SK_WAIT_SECONDS:=300}"
: "${SK_ORIG_INIT:=/sbin/init.spotkeeper-orig}"
say() {
    echo "spotkeeper-shim: $*" >&2
    echo "spotkeeper-shim: $*" 2>/dev/null > /dev/kmsg || true
}
fall_back() {
    say "$1; booting the image's own system"
    shift
    exec "$SK_ORIG_INIT" "$@"
}
if [ "$$" = 1 ]; then
    # Without an initramfs /dev may be empty: no /dev/null to silence into.
    [ -c /dev/null ] || mount -t devtmpfs devtmpfs /dev || true
    mount -t proc proc /proc 2>/dev/null || true
    mount -t sysfs sysfs /sys 2>/dev/null || true
fi
waited=0
until dev=$(find_device "$SK_ROOT_VOLUME" "$SK_ROOT_DEVICE"); do
    [ "$waited" -ge "$SK_WAIT_SECONDS" ] && fall_back "persistent root $SK_ROOT_VOLUME is not attached after ${SK_WAIT_SECONDS}s" "$@"
    [ "$waited" -eq 0 ] && say "waiting for the persistent root $SK_ROOT_VOLUME"
    sleep 1
    waited=$((waited + 1))
done
[ -d "$SK_NEWROOT" ] || mkdir -p "$SK_NEWROOT" 2>/dev/null || fall_back "there is no $SK_NEWROOT to mount the persistent root on (the image's root is read-only)" "$@"
part=$(mount_system "$dev" "$SK_NEWROOT") || fall_back "no partition of $dev ($SK_ROOT_VOLUME) holds a system (/sbin/init)" "$@"
# The partition is mounted read-only, as a kernel mounts a root (the
# system's own init remounts it as its fstab says); it is written to only
# for the directory the image's root moves to and the record of a warning.
kernel=$(uname -r)
warning=""
if [ ! -d "$SK_NEWROOT/lib/modules/$kernel" ]; then
    have=""
    for m in "$SK_NEWROOT"/lib/modules/*; do
        [ -d "$m" ] && have="$have $(basename "$m")"
    done
    warning="no /lib/modules/$kernel for the running kernel"
    say "WARNING: the persistent root has no /lib/modules/$kernel for the running kernel (it has:${have:- nothing}); drivers built as modules will not load: install that kernel's modules on the volume, or launch from an image with the volume's kernel"
fi
record="$SK_NEWROOT/var/lib/spotkeeper/boot-warnings"
if [ ! -d "$SK_NEWROOT/old-root" ] || [ -n "$warning" ] || [ -e "$record" ]; then
    if mount -o remount,rw "$SK_NEWROOT"; then
        mkdir -p "$SK_NEWROOT/old-root"
        rm -f "$record"
        if [ -n "$warning" ] && mkdir -p "$(dirname "$record")"; then
            echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $warning" > "$record" || true
        fi
        mount -o remount,ro "$SK_NEWROOT" || true
    fi
fi
say "chain-loading $SK_ROOT_VOLUME: $(describe "$dev" "$part") holds its system"
if cd "$SK_NEWROOT" && pivot_root . old-root; then
    exec /sbin/init "$@"
fi
fall_back "pivot_root into $part failed" "$@"
SHIM
    } > "$1"
    chmod 755 "$1"
}

setup_root_volume() {
    if [ -e /old-root/etc/spotkeeper-image-root ]; then
        log "running on the persistent root $SK_ROOT_VOLUME"
        if [ -s "$SK_ROOTFS$SK_STATE_DIR/boot-warnings" ]; then
            log "WARNING: this boot's init said: $(cat "$SK_ROOTFS$SK_STATE_DIR/boot-warnings")"
        fi
        return 0
    fi
    # Wait for the volume on this first boot too: rebooting before spotkeeper
    # has attached it would only fall back to the image's system.
    dev=$(wait_device "$SK_ROOT_VOLUME" "$SK_ROOT_DEVICE")
    mnt=$(mktemp -d)
    if ! part=$(mount_system "$dev" "$mnt"); then
        rmdir "$mnt"
        log "no partition of $dev ($SK_ROOT_VOLUME) holds a system (/sbin/init); the persistent root is not installed and the box's own user data does not run"
        exit 1
    fi
    umount "$mnt"
    rmdir "$mnt"
    log "the persistent root's system is on $(describe "$dev" "$part")"
    if shares_identity "$dev" "$part"; then
        if ! reidentify "$dev" "$part"; then
            log "the persistent root would answer to the image disk's names; it is not installed and the box's own user data does not run"
            exit 1
        fi
    fi
    init="$SK_ROOTFS/sbin/init"
    if [ ! -e "$SK_ROOTFS/sbin/init.spotkeeper-orig" ]; then
        cp -P "$init" "$SK_ROOTFS/sbin/init.spotkeeper-orig"
    fi
    rm -f "$init"
    write_shim "$init"
    # The init mounts the volume here; the image's root is read-only then.
    mkdir -p "$SK_ROOTFS/mnt/spotkeeper-root"
    touch "$SK_ROOTFS/etc/spotkeeper-image-root"
    log "persistent root $SK_ROOT_VOLUME installed; rebooting into it"
    $SK_REBOOT
    exit 0
}

# The agent's unit (`spotkeeper agent` with the box's hook, timeout and
# data mount). The hook's text goes into a file of its own, never through
# the unit's own quoting.
setup_agent() {
    etc="$SK_ROOTFS/etc/spotkeeper"
    mkdir -p "$etc" "$SK_ROOTFS/etc/systemd/system" "$SK_ROOTFS$SK_STATE_DIR"
    args="agent"
    if [ -n "$SK_AGENT_HOOK" ]; then
        echo "$SK_AGENT_HOOK" | base64 -d > "$etc/on-interruption"
        chmod 600 "$etc/on-interruption"
        args="$args --on-interruption-file /etc/spotkeeper/on-interruption"
    fi
    args="$args --timeout ${SK_AGENT_TIMEOUT}s"
    if [ -n "$SK_DATA_MOUNT" ]; then
        args="$args --mount $SK_DATA_MOUNT"
    fi
    args="$args --done-file $SK_STATE_DIR/agent-done"
    cat > "$SK_ROOTFS/etc/systemd/system/spotkeeper-agent.service" <<UNIT
[Unit]
Description=spotkeeper agent: the spot warning's two minutes on this instance
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
ExecStart=/usr/local/bin/spotkeeper $args
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
UNIT
    if command -v "$SK_SYSTEMCTL" > /dev/null 2>&1; then
        "$SK_SYSTEMCTL" daemon-reload || true
        "$SK_SYSTEMCTL" enable --now spotkeeper-agent.service || log "could not start the agent's unit"
    fi
    log "agent unit installed (spotkeeper-agent.service)"
}

run_user_script() {
    [ -n "$SK_USER_SCRIPT" ] || return 0
    mkdir -p "$SK_ROOTFS$SK_STATE_DIR"
    script="$SK_ROOTFS$SK_STATE_DIR/user-data"
    echo "$SK_USER_SCRIPT" | base64 -d > "$script"
    chmod 700 "$script"
    log "running the box's own user data"
    "$script"
}

if [ -n "$SK_ROOT_VOLUME" ]; then
    setup_root_volume
fi
if [ -n "$SK_DATA_VOLUME" ]; then
    setup_data_volume
fi
if [ "$SK_AGENT" = 1 ]; then
    setup_agent
fi
run_user_script
