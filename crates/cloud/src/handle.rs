//! Handles in the style of pycloudlib: an [`InstanceHandle`] you can wait on,
//! refresh, delete, add storage and network interfaces to and run commands
//! on; a [`Vpc`] you can delete with everything in it.

use std::fmt;
use std::time::Duration;

use crate::aws::{AwsCloud, VpcInfo, next_free_device};
use crate::error::{CloudError, ErrorKind};
use crate::model::{
    Instance, InstanceId, InstanceState, LaunchSpec, NetworkInterface, TagFilter, Volume, tags,
};
use crate::prelude::*;
use crate::ssh::{CloudInitStatus, ExecOutput, SshError, SshSettings};
use crate::wait::{self, Look};

/// Tag on volumes and interfaces added through a handle: the instance they go with.
pub const DELETE_WITH: &str = "spotkeeper:delete-with";

/// Launch to `running`; spot fulfilment is usually seconds, a busy zone minutes.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// `launch_ready` and a waiting `wait`: boot and cloud-init take minutes.
const READY_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Terminate to `terminated`.
const DELETE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const POLL: Duration = Duration::from_secs(2);

/// An instance you can act on. Cheap to clone; [`InstanceHandle::info`] is
/// the last description, [`InstanceHandle::refresh`] asks AWS again.
#[derive(Clone)]
pub struct InstanceHandle {
    cloud: AwsCloud,
    info: Instance,
    ssh: SshSettings,
    /// SSH settings were given: waits include boot and cloud-init.
    ssh_given: bool,
}

impl fmt::Debug for InstanceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceHandle")
            .field("info", &self.info)
            .field("ssh", &self.ssh)
            .finish_non_exhaustive()
    }
}

/// What [`InstanceHandle::update`] runs.
const UPDATE_SCRIPT: &str = "if command -v apt-get >/dev/null 2>&1; then \
     export DEBIAN_FRONTEND=noninteractive; apt-get -q update && apt-get -q -y dist-upgrade; \
     elif command -v dnf >/dev/null 2>&1; then dnf -y upgrade; \
     elif command -v yum >/dev/null 2>&1; then yum -y update; \
     else echo 'no apt-get, dnf or yum to update with' >&2; exit 1; fi";

/// `command` as root: as it is for root, else through `sudo -n` (never a prompt).
fn as_root(command: &str) -> String {
    let quoted = format!("'{}'", command.replace('\'', "'\\''"));
    format!("if [ \"$(id -u)\" = 0 ]; then sh -c {quoted}; else sudo -n sh -c {quoted}; fi")
}

/// Why a handle call that talks to AWS and to the instance failed.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// An AWS call.
    #[error(transparent)]
    Cloud(#[from] CloudError),
    /// SSH or scp.
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// cloud-init finished, with errors.
    #[error("cloud-init on {id} finished with errors: {detail}")]
    CloudInit {
        /// The instance.
        id: InstanceId,
        /// What cloud-init said.
        detail: String,
    },
}

/// A VPC made by spotkeeper, with what was made in it.
#[derive(Clone)]
pub struct Vpc {
    cloud: AwsCloud,
    info: VpcInfo,
}

impl fmt::Debug for Vpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vpc")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Vpc {
    /// Ids and names of what is in it.
    pub fn info(&self) -> &VpcInfo {
        &self.info
    }

    /// The subnet in `zone`, or the first one.
    pub fn subnet(&self, zone: Option<&str>) -> Option<&str> {
        let mut subnets = self.info.subnets.iter();
        match zone {
            Some(z) => subnets.find(|(_, sz)| sz == z).map(|(s, _)| s.as_str()),
            None => subnets.next().map(|(s, _)| s.as_str()),
        }
    }

    /// Terminates the instances inside, then deletes everything spotkeeper made for it.
    pub async fn delete(self) -> Result<(), CloudError> {
        self.cloud.delete_vpc(&self.info).await
    }
}

impl AwsCloud {
    /// Launches one instance as `spec` says; with `wait`, returns once it runs.
    pub async fn launch_instance(
        &self,
        spec: &LaunchSpec,
        wait: bool,
    ) -> Result<InstanceHandle, CloudError> {
        let info = self.launch(spec).await?;
        let mut handle = InstanceHandle {
            cloud: self.clone(),
            info,
            ssh: SshSettings::default(),
            ssh_given: false,
        };
        if wait {
            handle.wait_running().await?;
        }
        Ok(handle)
    }

    /// Launches one instance and, with `wait`, returns once it has booted
    /// and cloud-init has finished (pycloudlib's `launch`): `running`, then
    /// an SSH login with `ssh`, then `cloud-init status --wait` done. An
    /// error if cloud-init ends in error.
    pub async fn launch_ready(
        &self,
        spec: &LaunchSpec,
        ssh: SshSettings,
        wait: bool,
    ) -> Result<InstanceHandle, LibraryError> {
        let mut handle = self.launch_instance(spec, false).await?.with_ssh(ssh);
        if wait {
            handle.wait_ready(READY_TIMEOUT).await?;
        }
        Ok(handle)
    }

    /// Launches into `vpc`: its first subnet (or the one in `spec.zone`) and
    /// its security group, unless `spec` names its own.
    pub async fn launch_in_vpc(
        &self,
        spec: &LaunchSpec,
        vpc: &Vpc,
        wait: bool,
    ) -> Result<InstanceHandle, CloudError> {
        let mut spec = spec.clone();
        if spec.subnet_id.is_none() {
            spec.subnet_id = vpc.subnet(spec.zone.as_deref()).map(str::to_owned);
        }
        if spec.security_group_ids.is_empty() {
            spec.security_group_ids = vpc.info().security_group_id.iter().cloned().collect();
        }
        self.launch_instance(&spec, wait).await
    }

    /// A handle for an instance launched elsewhere.
    pub async fn get_instance(&self, id: &InstanceId) -> Result<InstanceHandle, CloudError> {
        let info = self.instance(id).await?.ok_or_else(|| {
            CloudError::from_code(
                "DescribeInstances",
                "InvalidInstanceID.NotFound",
                format!("instance {id} does not exist"),
            )
        })?;
        Ok(InstanceHandle {
            cloud: self.clone(),
            info,
            ssh: SshSettings::default(),
            ssh_given: false,
        })
    }

    /// The VPC named `name`, created (with subnets, gateway, routes and an SSH
    /// security group) if it does not exist yet.
    pub async fn get_or_create_vpc(&self, name: &str, cidr: &str) -> Result<Vpc, CloudError> {
        let info = self.get_or_create_vpc_info(name, cidr).await?;
        Ok(Vpc {
            cloud: self.clone(),
            info,
        })
    }

    /// The VPC named `name`, if it exists.
    pub async fn vpc(&self, name: &str) -> Result<Option<Vpc>, CloudError> {
        Ok(self.find_vpc(name).await?.map(|info| Vpc {
            cloud: self.clone(),
            info,
        }))
    }
}

impl InstanceHandle {
    /// Instance id.
    pub fn id(&self) -> &InstanceId {
        &self.info.id
    }

    /// The last description.
    pub fn info(&self) -> &Instance {
        &self.info
    }

    /// Uses these SSH settings for [`execute`](Self::execute) and the
    /// waits; from now on [`wait`](Self::wait) also waits for boot and
    /// cloud-init, as pycloudlib's does.
    pub fn with_ssh(mut self, ssh: SshSettings) -> Self {
        self.ssh = ssh;
        self.ssh_given = true;
        self
    }

    /// The SSH settings in use.
    pub fn ssh_settings(&self) -> &SshSettings {
        &self.ssh
    }

    /// Describes the instance again.
    pub async fn refresh(&mut self) -> Result<&Instance, CloudError> {
        if let Some(info) = self.cloud.instance(&self.info.id).await? {
            self.info = info;
        }
        Ok(&self.info)
    }

    /// Waits until the instance is up: `running`, and when SSH settings were
    /// given ([`with_ssh`](Self::with_ssh)) also booted (an SSH login works)
    /// and cloud-init finished, as pycloudlib's `wait` does.
    pub async fn wait(&mut self) -> Result<&Instance, LibraryError> {
        if self.ssh_given {
            self.wait_ready(READY_TIMEOUT).await?;
        } else {
            self.wait_running().await?;
        }
        Ok(&self.info)
    }

    /// Waits for `running`, then an SSH login, then cloud-init to finish
    /// (with errors: an error; degraded: fine), all within `within`.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<&Instance, LibraryError> {
        let deadline = tokio::time::Instant::now() + within;
        self.wait_running().await?;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        self.wait_for_ssh(left()).await?;
        match self.wait_for_cloud_init(left()).await? {
            CloudInitStatus::Done | CloudInitStatus::Degraded(_) => Ok(&self.info),
            CloudInitStatus::Error(detail) => Err(LibraryError::CloudInit {
                id: self.info.id.clone(),
                detail,
            }),
        }
    }

    /// Waits until the instance is `running`; an error if it ends first.
    pub async fn wait_running(&mut self) -> Result<&Instance, CloudError> {
        let (cloud, id) = (&self.cloud, &self.info.id);
        self.info = wait::until("DescribeInstances", RUNNING_TIMEOUT, POLL, || async {
            // Right after RunInstances the id may be unknown to describes for a moment.
            match cloud.instance(id).await? {
                Some(info) if info.state == InstanceState::Running => Ok(Look::Done(info)),
                None
                | Some(Instance {
                    state: InstanceState::Pending,
                    ..
                }) => Ok(Look::NotYet(format!("instance {id} not running"))),
                Some(info) => Err(CloudError::other(
                    "DescribeInstances",
                    ErrorKind::Other,
                    format!("instance {id} is {}, not running", info.state),
                )),
            }
        })
        .await?;
        Ok(&self.info)
    }

    /// Waits until the instance is terminated.
    pub async fn wait_for_delete(&mut self) -> Result<(), CloudError> {
        self.cloud
            .wait_terminated(std::slice::from_ref(&self.info.id), DELETE_TIMEOUT)
            .await?;
        self.refresh().await?;
        Ok(())
    }

    /// Terminates the instance. With `wait`, also waits until it is
    /// terminated and deletes what was added to it through this library
    /// (volumes and interfaces tagged `spotkeeper:delete-with`) that AWS did
    /// not delete with it.
    pub async fn delete(&mut self, wait: bool) -> Result<(), CloudError> {
        self.cloud
            .terminate(std::slice::from_ref(&self.info.id))
            .await?;
        if !wait {
            return Ok(());
        }
        self.wait_for_delete().await?;
        let mine = TagFilter::default().with(DELETE_WITH, self.info.id.as_str());
        for v in self.cloud.volumes(&mine).await? {
            self.cloud.delete_volume(&v.id).await?;
        }
        let enis = self.cloud.ec2().describe_network_interfaces().filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{DELETE_WITH}"))
                .values(self.info.id.as_str())
                .build(),
        );
        let enis = enis
            .send()
            .await
            .map_err(|e| crate::aws::sdk_error("DescribeNetworkInterfaces", e))?;
        for eni in enis.network_interfaces() {
            if let Some(id) = eni.network_interface_id() {
                self.cloud.delete_network_interface(id).await?;
            }
        }
        Ok(())
    }

    fn added_tags(&self, what: &str) -> Vec<(String, String)> {
        let mut t = vec![
            (
                tags::NAME.to_owned(),
                format!(
                    "{}-{what}",
                    self.info.tag(tags::NAME).unwrap_or(self.info.id.as_str())
                ),
            ),
            (DELETE_WITH.to_owned(), self.info.id.to_string()),
        ];
        for key in [tags::OWNER, tags::BOX] {
            if let Some(v) = self.info.tag(key) {
                t.push((key.to_owned(), v.to_owned()));
            }
        }
        t
    }

    /// Creates a volume in the instance's zone, attaches it at the next free
    /// `/dev/sd[f-z]`, tags it, and marks it to be deleted with the instance.
    pub async fn add_volume(&mut self, size_gb: i32, kind: &str) -> Result<Volume, CloudError> {
        let zone = self.info.zone.clone().ok_or_else(|| {
            CloudError::other(
                "CreateVolume",
                ErrorKind::InvalidRequest,
                format!("instance {} has no zone", self.info.id),
            )
        })?;
        let used = self.cloud.used_devices(&self.info.id).await?;
        let device = next_free_device(&used).ok_or_else(|| {
            CloudError::other(
                "AttachVolume",
                ErrorKind::QuotaExceeded,
                format!(
                    "instance {} has no free device name in /dev/sd[f-z]",
                    self.info.id
                ),
            )
        })?;
        let volume = self
            .cloud
            .create_volume(&zone, Some(size_gb), kind, None, &self.added_tags("volume"))
            .await?;
        let attached = match self
            .cloud
            .attach_volume(&volume.id, &self.info.id, &device)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                // Leave nothing half-done: the volume is useless unattached.
                let _ = self.cloud.delete_volume(&volume.id).await;
                return Err(e);
            }
        };
        self.cloud
            .delete_on_termination(&self.info.id, &device)
            .await?;
        Ok(attached)
    }

    /// Creates a network interface in the instance's subnet and attaches it
    /// at the next free device index; it is deleted with the instance.
    pub async fn add_network_interface(&mut self) -> Result<NetworkInterface, CloudError> {
        let subnet = self.info.subnet_id.clone().ok_or_else(|| {
            CloudError::other(
                "CreateNetworkInterface",
                ErrorKind::InvalidRequest,
                format!("instance {} is not in a subnet", self.info.id),
            )
        })?;
        let attached = self
            .cloud
            .instance_network_interfaces(&self.info.id)
            .await?;
        let next = attached
            .iter()
            .filter_map(|n| n.attachment.as_ref().map(|a| a.1))
            .max()
            .map_or(1, |m| m + 1);
        self.cloud
            .attach_new_network_interface(
                &self.info.id,
                &subnet,
                next,
                &[],
                &self.added_tags("eni"),
            )
            .await
    }

    fn address(&self) -> Result<String, SshError> {
        self.ssh
            .address(self.info.address())
            .ok_or_else(|| SshError::NoAddress(self.info.id.to_string()))
    }

    /// Runs `command` over SSH and returns its output and exit status.
    pub async fn execute(&self, command: &str, within: Duration) -> Result<ExecOutput, SshError> {
        self.ssh.exec(&self.address()?, command, within).await
    }

    /// Waits until SSH logins work.
    pub async fn wait_for_ssh(&self, within: Duration) -> Result<(), SshError> {
        self.ssh.wait_for_ssh(&self.address()?, within).await
    }

    /// Waits for cloud-init to finish and returns its verdict.
    pub async fn wait_for_cloud_init(&self, within: Duration) -> Result<CloudInitStatus, SshError> {
        self.ssh.wait_for_cloud_init(&self.address()?, within).await
    }

    /// Uploads `local` to `remote` on the instance (the system `scp`).
    pub async fn push_file(
        &self,
        local: &std::path::Path,
        remote: &str,
        within: Duration,
    ) -> Result<(), SshError> {
        self.ssh
            .copy(&self.address()?, local, remote, true, within)
            .await
    }

    /// Downloads `remote` from the instance to `local` (the system `scp`).
    pub async fn pull_file(
        &self,
        remote: &str,
        local: &std::path::Path,
        within: Duration,
    ) -> Result<(), SshError> {
        self.ssh
            .copy(&self.address()?, local, remote, false, within)
            .await
    }

    /// Runs a script on the instance: uploaded to a temporary file, run
    /// (with its `#!` line, else `sh`), removed; its output and status.
    pub async fn run_script(&self, script: &str, within: Duration) -> Result<ExecOutput, SshError> {
        let token = crate::model::random_token();
        // Readable by this user only (a script may carry secrets), made
        // with a name no one else can take first; scp gives the remote copy
        // the same mode.
        let mut local = tempfile::Builder::new()
            .prefix("spotkeeper-local-")
            .tempfile()
            .map_err(|e| SshError::Spawn(format!("a temporary file for the script: {e}")))?;
        std::io::Write::write_all(&mut local, script.as_bytes())
            .map_err(|e| SshError::Spawn(format!("writing {}: {e}", local.path().display())))?;
        let remote = format!("/tmp/spotkeeper-script-{token}");
        self.push_file(local.path(), &remote, within).await?;
        drop(local);
        let run = if script.starts_with("#!") {
            format!("chmod 700 {remote} && {remote}; rc=$?; rm -f {remote}; exit $rc")
        } else {
            format!("sh {remote}; rc=$?; rm -f {remote}; exit $rc")
        };
        self.execute(&run, within).await
    }

    /// Prepares the instance to be imaged (pycloudlib's `clean`):
    /// `cloud-init clean --logs --machine-id --seed`, so an instance made
    /// from the image boots as a new one (new machine id, cloud-init runs
    /// again and makes new SSH host keys). As root, or through `sudo -n`.
    pub async fn clean(&self, within: Duration) -> Result<ExecOutput, SshError> {
        self.execute(
            &as_root("cloud-init clean --logs --machine-id --seed"),
            within,
        )
        .await
    }

    /// Upgrades the installed packages (pycloudlib's `update`): apt-get
    /// (non-interactive `update` and `dist-upgrade`), else dnf or yum. As
    /// root, or through `sudo -n`.
    pub async fn update(&self, within: Duration) -> Result<ExecOutput, SshError> {
        self.execute(&as_root(UPDATE_SCRIPT), within).await
    }

    /// The console output AWS keeps (kernel and init messages), if any yet.
    pub async fn console_log(&self) -> Result<Option<String>, CloudError> {
        self.cloud.console_output(&self.info.id).await
    }

    /// Reboots the instance; with `wait`, returns once it answers again
    /// (an SSH login when SSH settings were given, else `running`).
    pub async fn restart(&mut self, wait: bool) -> Result<(), LibraryError> {
        self.cloud
            .reboot(std::slice::from_ref(&self.info.id))
            .await?;
        if wait {
            if self.ssh_given {
                // The reboot takes a moment to begin: let sshd go down first.
                tokio::time::sleep(Duration::from_secs(5)).await;
                self.wait_for_ssh(READY_TIMEOUT).await?;
            } else {
                self.wait_running().await?;
            }
        }
        Ok(())
    }

    /// Stops the instance (on-demand, or persistent spot: a one-time spot
    /// instance cannot be stopped); with `wait`, until it is `stopped`.
    pub async fn shutdown(&mut self, wait: bool) -> Result<(), CloudError> {
        self.cloud
            .stop_instances(std::slice::from_ref(&self.info.id))
            .await?;
        if wait {
            self.wait_state(InstanceState::Stopped).await?;
        }
        Ok(())
    }

    /// Starts a stopped instance; with `wait`, as [`wait`](Self::wait).
    pub async fn start(&mut self, wait: bool) -> Result<(), LibraryError> {
        self.cloud
            .start_instances(std::slice::from_ref(&self.info.id))
            .await?;
        if wait {
            self.wait().await?;
        }
        Ok(())
    }

    async fn wait_state(&mut self, want: InstanceState) -> Result<(), CloudError> {
        let (cloud, id) = (&self.cloud, &self.info.id);
        self.info = wait::until("DescribeInstances", RUNNING_TIMEOUT, POLL, || async {
            match cloud.instance(id).await? {
                Some(info) if info.state == want => Ok(Look::Done(info)),
                _ => Ok(Look::NotYet(format!("instance {id} not {want}"))),
            }
        })
        .await?;
        Ok(())
    }
}
