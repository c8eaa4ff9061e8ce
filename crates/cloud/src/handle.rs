//! Handles in the style of pycloudlib: an [`InstanceHandle`] you can wait on,
//! refresh, delete, add storage and network interfaces to and run commands
//! on; a [`Vpc`] you can delete with everything in it.

use std::fmt;
use std::time::Duration;

use crate::aws::{AwsCloud, VpcInfo, next_free_device};
use crate::cloud::Cloud;
use crate::error::{CloudError, ErrorKind};
use crate::model::{
    Instance, InstanceId, InstanceState, LaunchSpec, NetworkInterface, TagFilter, Volume, tags,
};
use crate::ssh::{CloudInitStatus, ExecOutput, SshError, SshSettings};

/// Tag on volumes and interfaces added through a handle: the instance they go with.
pub const DELETE_WITH: &str = "spotkeeper:delete-with";

/// Launch to `running`; spot fulfilment is usually seconds, a busy zone minutes.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(10 * 60);
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
}

impl fmt::Debug for InstanceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceHandle")
            .field("info", &self.info)
            .field("ssh", &self.ssh)
            .finish_non_exhaustive()
    }
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
        };
        if wait {
            handle.wait().await?;
        }
        Ok(handle)
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

    /// Uses these SSH settings for [`execute`](Self::execute) and the waits.
    pub fn with_ssh(mut self, ssh: SshSettings) -> Self {
        self.ssh = ssh;
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

    /// Waits until the instance is `running`; an error if it ends first.
    pub async fn wait(&mut self) -> Result<&Instance, CloudError> {
        let deadline = tokio::time::Instant::now() + RUNNING_TIMEOUT;
        loop {
            // Right after RunInstances the id may be unknown to describes for a moment.
            if let Some(info) = self.cloud.instance(&self.info.id).await? {
                self.info = info;
                match self.info.state {
                    InstanceState::Running => return Ok(&self.info),
                    InstanceState::Pending => {}
                    other => {
                        return Err(CloudError::other(
                            "DescribeInstances",
                            ErrorKind::Other,
                            format!("instance {} is {other}, not running", self.info.id),
                        ));
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CloudError::other(
                    "DescribeInstances",
                    ErrorKind::Other,
                    format!(
                        "instance {} not running after {}s",
                        self.info.id,
                        RUNNING_TIMEOUT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
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
}
