#!/bin/sh
# spotkeeper boot script (cloud-init user data), generated for box @BOX@.
#
# It contains no credentials: spotkeeper attaches the volumes from outside;
# this script only waits for them to appear.
#
# - data volume: wait for the device, create a filesystem only when the volume
#   is known to be new (spotkeeper created it empty and no box has used it
#   yet), blkid positively finds no filesystem and its first MiB is zeros;
#   never because blkid failed. Then mount it (and record it in /etc/fstab
#   with nofail). A volume that is not known to be new and has no filesystem
#   is left untouched and the boot script stops before the user's data.
# - persistent root: install a small init in front of the image's own
#   (/sbin/init), then reboot; from then on every boot mounts the volume and
#   pivot_roots into it, keeping the image's disk under /old-root.
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
: "${SK_ROOTFS:=}"
: "${SK_SYS_BLOCK:=/sys/block}"
: "${SK_DEV_DIR:=/dev}"
: "${SK_BYID_DIR:=/dev/disk/by-id}"
: "${SK_WAIT_SECONDS:=900}"
: "${SK_REBOOT:=reboot}"
: "${SK_STATE_DIR:=/var/lib/spotkeeper}"

log() { echo "spotkeeper-boot: $*" >&2; }

# Prints the block device of EBS volume $1 (vol-…), requested as device $2
# (/dev/sdf). On Nitro instances EBS volumes are NVMe devices whose serial is
# the volume id without the dash; on Xen they keep the requested name, as
# /dev/sdX or /dev/xvdX.
find_device() {
    want=$(echo "$1" | tr -d '-')
    for serial in "$SK_SYS_BLOCK"/nvme*/device/serial; do
        [ -r "$serial" ] || continue
        if [ "$(tr -d ' \n' < "$serial")" = "$want" ]; then
            dev=$(basename "$(dirname "$(dirname "$serial")")")
            echo "$SK_DEV_DIR/$dev"
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

setup_data_volume() {
    dev=$(wait_device "$SK_DATA_VOLUME" "$SK_DATA_DEVICE")
    found=0
    # -p: probe the device itself, never blkid's cache (a device name may
    # have belonged to another volume before).
    blkid -p "$dev" > /dev/null 2>&1 || found=$?
    case "$found" in
    0)
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

# The init placed in front of the image's own. It runs as PID 1 (before
# udev, hence the sysfs look-up), and falls back to the image's init if the
# volume never shows up, so the box still boots and can be inspected.
write_shim() {
    cat > "$1" <<SHIM
#!/bin/sh
# spotkeeper persistent root: mount $SK_ROOT_VOLUME and chain-load its init.
: "\${SK_SYS_BLOCK:=/sys/block}"
: "\${SK_DEV_DIR:=/dev}"
: "\${SK_NEWROOT:=/mnt/spotkeeper-root}"
: "\${SK_WAIT_SECONDS:=300}"
: "\${SK_ORIG_INIT:=/sbin/init.spotkeeper-orig}"
if [ "\$\$" = 1 ]; then
    mount -t proc proc /proc 2>/dev/null || true
    mount -t sysfs sysfs /sys 2>/dev/null || true
    mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
fi
want=$(echo "$SK_ROOT_VOLUME" | tr -d '-')
dev=""
waited=0
while [ -z "\$dev" ] && [ "\$waited" -lt "\$SK_WAIT_SECONDS" ]; do
    for serial in "\$SK_SYS_BLOCK"/nvme*/device/serial; do
        [ -r "\$serial" ] || continue
        [ "\$(tr -d ' \n' < "\$serial")" = "\$want" ] && dev="\$SK_DEV_DIR/\$(basename "\$(dirname "\$(dirname "\$serial")")")"
    done
    for d in "\$SK_DEV_DIR/$(basename "$SK_ROOT_DEVICE")" "\$SK_DEV_DIR/xvd$(basename "$SK_ROOT_DEVICE" | sed 's/^sd//')"; do
        [ -z "\$dev" ] && [ -b "\$d" ] && dev="\$d"
    done
    [ -n "\$dev" ] || { sleep 1; waited=\$((waited + 1)); }
done
if [ -z "\$dev" ] || ! mkdir -p "\$SK_NEWROOT" || ! mount "\$dev" "\$SK_NEWROOT"; then
    echo "spotkeeper: persistent root $SK_ROOT_VOLUME not found; booting the image's own system" >&2
    exec "\$SK_ORIG_INIT" "\$@"
fi
mkdir -p "\$SK_NEWROOT/old-root"
if cd "\$SK_NEWROOT" && pivot_root . old-root; then
    exec /sbin/init "\$@"
fi
echo "spotkeeper: pivot_root into $SK_ROOT_VOLUME failed; booting the image's own system" >&2
exec "\$SK_ORIG_INIT" "\$@"
SHIM
    chmod 755 "$1"
}

setup_root_volume() {
    if [ -e /old-root/etc/spotkeeper-image-root ]; then
        log "running on the persistent root $SK_ROOT_VOLUME"
        return 0
    fi
    # Wait for the volume on this first boot too: rebooting before spotkeeper
    # has attached it would only fall back to the image's system.
    wait_device "$SK_ROOT_VOLUME" "$SK_ROOT_DEVICE" > /dev/null
    init="$SK_ROOTFS/sbin/init"
    if [ ! -e "$SK_ROOTFS/sbin/init.spotkeeper-orig" ]; then
        cp -P "$init" "$SK_ROOTFS/sbin/init.spotkeeper-orig"
    fi
    rm -f "$init"
    write_shim "$init"
    touch "$SK_ROOTFS/etc/spotkeeper-image-root"
    log "persistent root $SK_ROOT_VOLUME installed; rebooting into it"
    $SK_REBOOT
    exit 0
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
run_user_script
