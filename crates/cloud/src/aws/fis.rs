//! AWS Fault Injection Service for drills: a real spot interruption of one
//! instance (`aws:ec2:send-spot-instance-interruptions`). EC2 then sends the
//! instance's own warning, through EventBridge and the metadata service,
//! `durationBeforeInterruption` before it interrupts it (2 minutes: exactly
//! the spot warning's notice; longer adds a rebalance recommendation first),
//! and interrupts it: the drill is no longer a message spotkeeper wrote.
//!
//! The experiment runs under a role FIS assumes (it needs
//! `ec2:SendSpotInstanceInterruptions` and `ec2:DescribeInstances`), passed
//! by the caller (`iam:PassRole`). The template is made for the one
//! instance, by ARN, tagged at creation, and deleted by the caller after the
//! drill ([`AwsCloud::delete_fis_template`]).

use std::collections::HashMap;

use aws_sdk_fis::types::{
    CreateExperimentTemplateActionInput, CreateExperimentTemplateStopConditionInput,
    CreateExperimentTemplateTargetInput,
};

use super::{AwsCloud, sdk_error};
use crate::error::{CloudError, ErrorKind};

/// The FIS action that interrupts spot instances.
pub const FIS_SPOT_ACTION: &str = "aws:ec2:send-spot-instance-interruptions";

/// An interruption under way: its template and experiment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FisDrill {
    /// The experiment template made for it (`EXT…`).
    pub template: String,
    /// The experiment started from it (`EXP…`).
    pub experiment: String,
}

/// What a drill through FIS needs.
#[derive(Debug, Clone)]
pub struct FisRequest<'a> {
    /// The instance's ARN (`arn:aws:ec2:REGION:ACCOUNT:instance/i-…`).
    pub instance_arn: &'a str,
    /// The role FIS assumes for the experiment.
    pub role_arn: &'a str,
    /// What the template and experiment say they are.
    pub description: &'a str,
    /// Tags of both (the owner's, the box's, the drill's id).
    pub tags: &'a [(String, String)],
    /// Idempotency: a retried request with the same token makes nothing twice
    /// (the experiment's token is derived from it).
    pub client_token: &'a str,
}

/// A template part the SDK's builder refused (a required field missing).
fn unbuilt(e: aws_sdk_fis::error::BuildError) -> CloudError {
    CloudError::other(
        "CreateExperimentTemplate",
        ErrorKind::InvalidRequest,
        e.to_string(),
    )
}

impl AwsCloud {
    /// Makes an experiment template interrupting exactly one spot instance
    /// two minutes after the warning, and starts it.
    pub async fn fis_interrupt(&self, r: &FisRequest<'_>) -> Result<FisDrill, CloudError> {
        let tags: HashMap<String, String> = r.tags.iter().cloned().collect();
        let target = CreateExperimentTemplateTargetInput::builder()
            .resource_type("aws:ec2:spot-instance")
            .resource_arns(r.instance_arn)
            .selection_mode("ALL")
            .build()
            .map_err(unbuilt)?;
        let action = CreateExperimentTemplateActionInput::builder()
            .action_id(FIS_SPOT_ACTION)
            .description(r.description)
            .parameters("durationBeforeInterruption", "PT2M")
            .targets("SpotInstances", "instance")
            .build()
            .map_err(unbuilt)?;
        let stop = CreateExperimentTemplateStopConditionInput::builder()
            .source("none")
            .build()
            .map_err(unbuilt)?;
        let made = self
            .fis()
            .create_experiment_template()
            .client_token(r.client_token)
            .description(r.description)
            .role_arn(r.role_arn)
            .targets("instance", target)
            .actions("interrupt", action)
            .stop_conditions(stop)
            .set_tags(Some(tags.clone()))
            .send()
            .await
            .map_err(|e| sdk_error("CreateExperimentTemplate", e))?;
        let template = made
            .experiment_template()
            .and_then(|t| t.id())
            .ok_or_else(|| {
                CloudError::other(
                    "CreateExperimentTemplate",
                    ErrorKind::Other,
                    "the answer has no template id",
                )
            })?
            .to_owned();
        let started = self
            .fis()
            .start_experiment()
            .client_token(format!("{}-start", r.client_token))
            .experiment_template_id(&template)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| sdk_error("StartExperiment", e))?;
        let experiment = started
            .experiment()
            .and_then(|x| x.id())
            .ok_or_else(|| {
                CloudError::other(
                    "StartExperiment",
                    ErrorKind::Other,
                    "the answer has no experiment id",
                )
            })?
            .to_owned();
        Ok(FisDrill {
            template,
            experiment,
        })
    }

    /// The experiment's state (`pending`, `initiating`, `running`,
    /// `completed`, `stopped`, `failed`) and AWS's reason, if any.
    pub async fn fis_experiment_state(
        &self,
        experiment: &str,
    ) -> Result<(String, Option<String>), CloudError> {
        let out = self
            .fis()
            .get_experiment()
            .id(experiment)
            .send()
            .await
            .map_err(|e| sdk_error("GetExperiment", e))?;
        let state = out.experiment().and_then(|x| x.state());
        Ok((
            state
                .and_then(|s| s.status())
                .map_or_else(|| "unknown".to_owned(), |s| s.as_str().to_owned()),
            state.and_then(|s| s.reason()).map(str::to_owned),
        ))
    }

    /// Deletes a drill's template (its experiment keeps its record).
    pub async fn delete_fis_template(&self, template: &str) -> Result<(), CloudError> {
        self.fis()
            .delete_experiment_template()
            .id(template)
            .send()
            .await
            .map_err(|e| sdk_error("DeleteExperimentTemplate", e))?;
        Ok(())
    }
}
