//! The keys of one queue: every key shares the queue's hash tag (one
//! cluster slot), so every script touches one slot.

use fredkit_core::{Error, KeySpace, Result};

/// The keys of one queue, built from a [`KeySpace`] and the queue's name
/// (the hash tag): `prefix:{name}:wait`, `...:delayed`, `...:retry`,
/// `...:active`, `...:completed`, `...:dead` (sorted sets), `...:meta` (a
/// hash), `...:marker` (the sorted set blocked workers wait on) and
/// `...:job:<id>` (one hash per job).
#[derive(Clone, Debug)]
pub(crate) struct QueueKeys {
    pub(crate) space: KeySpace,
    pub(crate) name: String,
    pub(crate) wait: String,
    pub(crate) delayed: String,
    pub(crate) retry: String,
    pub(crate) active: String,
    pub(crate) completed: String,
    pub(crate) dead: String,
    pub(crate) meta: String,
    pub(crate) marker: String,
    /// `prefix:{name}:job:`: a job's key is this and its member.
    pub(crate) job_prefix: String,
}

impl QueueKeys {
    pub(crate) fn new(space: KeySpace, name: &str) -> Result<QueueKeys> {
        if name.is_empty() {
            return Err(Error::invalid_input(
                "a queue name is empty; give the queue a name (it is the hash tag of its keys)",
            ));
        }
        let k = |part: &str| space.tagged(name, [part]);
        Ok(QueueKeys {
            wait: k("wait")?,
            delayed: k("delayed")?,
            retry: k("retry")?,
            active: k("active")?,
            completed: k("completed")?,
            dead: k("dead")?,
            meta: k("meta")?,
            marker: k("marker")?,
            job_prefix: space.tagged(name, ["job", ""])?,
            name: name.to_string(),
            space,
        })
    }

    /// The job's key and its member in the state sets (the id escaped as a
    /// key part).
    pub(crate) fn job(&self, id: &str) -> Result<(String, String)> {
        if id.is_empty() {
            return Err(Error::invalid_input(format!(
                "a job id for queue '{}' is empty; give a non-empty id or none (one is generated)",
                self.name
            )));
        }
        let key = self.space.tagged(&self.name, ["job", id])?;
        let member = key
            .get(self.job_prefix.len()..)
            .map(str::to_string)
            .ok_or_else(|| Error::invalid_input(format!("job id {id:?} cannot be a key part")))?;
        Ok((key, member))
    }

    pub(crate) fn job_key_of_member(&self, member: &str) -> String {
        let mut k = String::with_capacity(self.job_prefix.len() + member.len());
        k.push_str(&self.job_prefix);
        k.push_str(member);
        k
    }

    /// The state sets, in the order of the admin scripts' KEYS.
    pub(crate) fn all_sets(&self) -> [String; 6] {
        [
            self.wait.clone(),
            self.delayed.clone(),
            self.retry.clone(),
            self.active.clone(),
            self.completed.clone(),
            self.dead.clone(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_shares_the_tag_and_members_are_escaped() -> Result<()> {
        let k = QueueKeys::new(KeySpace::new("app:jobs")?, "mail")?;
        assert_eq!(k.wait, "app:jobs:{mail}:wait");
        assert_eq!(k.job_prefix, "app:jobs:{mail}:job:");
        let (key, member) = k.job("invoice:42")?;
        assert_eq!(key, "app:jobs:{mail}:job:invoice%3A42");
        assert_eq!(member, "invoice%3A42");
        assert_eq!(k.job_key_of_member(&member), key);
        assert!(k.job("").is_err());
        assert!(QueueKeys::new(KeySpace::new("a")?, "").is_err());
        Ok(())
    }
}
