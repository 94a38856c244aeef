//! The K `smsrelay run` processes: started, killed, stopped, continued and
//! restarted by the run; every one is killed when the fleet is dropped.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::checks::StopWindow;

/// Settings every instance gets (SMSRELAY_* environment variables).
pub struct InstanceConfig {
    pub binary: PathBuf,
    pub logs: PathBuf,
    pub env: Vec<(String, String)>,
}

struct Instance {
    child: Child,
    generation: u32,
    stopped_at: Option<i64>,
    /// Killed by the run, waiting for its restart: its exit is no surprise.
    killed: bool,
}

pub struct Fleet {
    config: InstanceConfig,
    instances: Vec<Instance>,
    /// Built from the provider's URL for an instance and generation.
    url: Box<dyn Fn(usize, u32) -> String + Send>,
    pub stops: Vec<StopWindow>,
}

/// Sends `signal` (a name for kill(1)) to `pid`.
fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .context("run kill")?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

fn spawn(
    config: &InstanceConfig,
    url: &str,
    instance: usize,
    generation: u32,
) -> anyhow::Result<Child> {
    let log_path = config
        .logs
        .join(format!("instance-{instance}-{generation}.log"));
    let log = File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
    Command::new(&config.binary)
        .arg("run")
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .env("SMSRELAY_PROVIDER__WEBHOOK__URL", url)
        .env(
            "SMSRELAY_DISPATCH__INSTANCE_ID",
            format!("chaos-{instance}-{generation}"),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {}", config.binary.display()))
}

impl Fleet {
    pub fn start(
        config: InstanceConfig,
        count: usize,
        url: Box<dyn Fn(usize, u32) -> String + Send>,
    ) -> anyhow::Result<Self> {
        let mut fleet = Self {
            config,
            instances: Vec::new(),
            url,
            stops: Vec::new(),
        };
        for i in 0..count {
            let child = spawn(&fleet.config, &(fleet.url)(i, 0), i, 0)?;
            fleet.instances.push(Instance {
                child,
                generation: 0,
                stopped_at: None,
                killed: false,
            });
        }
        Ok(fleet)
    }

    /// SIGKILL; the instance is started again (next generation) by [`Fleet::restart`].
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let instance = &mut self.instances[i];
        instance.child.kill().context("SIGKILL")?;
        instance.child.wait()?;
        instance.killed = true;
        Ok(())
    }

    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        // Never leave the old process behind, whatever state it is in.
        let old = &mut self.instances[i].child;
        let _ = old.kill();
        let _ = old.wait();
        let generation = self.instances[i].generation + 1;
        let child = spawn(&self.config, &(self.url)(i, generation), i, generation)?;
        self.instances[i] = Instance {
            child,
            generation,
            stopped_at: None,
            killed: false,
        };
        Ok(())
    }

    pub fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        let instance = &mut self.instances[i];
        signal(instance.child.id(), "STOP")?;
        instance.stopped_at = Some(crate::now_ms());
        Ok(())
    }

    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        let instance = &mut self.instances[i];
        if let Some(from_ms) = instance.stopped_at.take() {
            signal(instance.child.id(), "CONT")?;
            self.stops.push(StopWindow {
                instance: i as u32,
                generation: instance.generation,
                from_ms,
                to_ms: crate::now_ms(),
            });
        }
        Ok(())
    }

    /// An instance that exited on its own (it should not): its index and status.
    pub fn exited(&mut self) -> Option<(usize, String)> {
        self.instances
            .iter_mut()
            .enumerate()
            .find_map(|(i, instance)| {
                if instance.killed {
                    return None;
                }
                match instance.child.try_wait() {
                    Ok(Some(status)) => Some((i, status.to_string())),
                    _ => None,
                }
            })
    }

    /// SIGTERM to all, and SIGKILL to any still running after `grace`.
    pub fn shutdown(&mut self, grace: Duration) {
        for i in 0..self.instances.len() {
            let _ = self.resume(i);
            let _ = signal(self.instances[i].child.id(), "TERM");
        }
        let deadline = std::time::Instant::now() + grace;
        for instance in &mut self.instances {
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = instance.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = instance.child.kill();
            let _ = instance.child.wait();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for instance in &mut self.instances {
            let _ = instance.child.kill();
            let _ = instance.child.wait();
        }
    }
}
