//! A scripted expert for the household world: from any state, the next action towards the
//! goal. It knows where everything is (privileged information), so it never searches.

use super::scene::{Place, Scene, TaskType, Treatment};

impl Scene {
    fn satisfies_treatment(&self, i: usize) -> bool {
        let o = &self.objects[i];
        match self.task.kind.treatment() {
            Some(Treatment::Clean) => o.clean,
            Some(Treatment::Heat) => o.hot,
            Some(Treatment::Cool) => o.cool,
            None => true,
        }
    }

    /// The receptacle the expert fills: for two objects, one of the task's kind that already
    /// holds a matching object, else the first of that kind.
    fn target(&self) -> Option<usize> {
        let kind = self.task.receptacle?;
        let of_kind: Vec<usize> = (0..self.receptacles.len())
            .filter(|&r| self.receptacles[r].kind == kind)
            .collect();
        let started = of_kind.iter().copied().find(|&r| {
            self.contents(r)
                .iter()
                .any(|&i| self.objects[i].kind == self.task.object && self.satisfies_treatment(i))
        });
        started.or_else(|| of_kind.first().copied())
    }

    /// Go to receptacle `r`, open it if needed, then do `then`.
    fn reach(&self, r: usize, then: String) -> String {
        let rec = &self.receptacles[r];
        if self.at != Some(r) {
            format!("go to {}", rec.name)
        } else if !rec.open {
            format!("open {}", rec.name)
        } else {
            then
        }
    }

    /// Put down what the agent holds in the nearest reachable place.
    fn put_down(&self, held: usize) -> String {
        let name = &self.objects[held].name;
        let here = self.at.unwrap_or(0);
        let spot = if self.at.is_some() {
            here
        } else {
            (0..self.receptacles.len())
                .find(|&r| !self.receptacles[r].openable)
                .unwrap_or(0)
        };
        self.reach(
            spot,
            format!("put {name} in/on {}", self.receptacles[spot].name),
        )
    }

    /// Pick up object `i` from where it is.
    fn fetch(&self, i: usize) -> String {
        match self.objects[i].place {
            Place::In(r) => self.reach(
                r,
                format!(
                    "take {} from {}",
                    self.objects[i].name, self.receptacles[r].name
                ),
            ),
            Place::Held => "inventory".into(),
        }
    }

    /// The expert's next action (`None` when the goal is reached or cannot be reached).
    pub fn expert_action(&self) -> Option<String> {
        if self.goal_reached() {
            return None;
        }
        let task = &self.task;
        let held = self.held();
        let held_matching = held.filter(|&h| self.objects[h].kind == task.object);
        if let (Some(h), None) = (held, held_matching) {
            return Some(self.put_down(h));
        }
        if task.kind == TaskType::LookAtObjInLight {
            let lamp = self.objects.iter().position(|o| o.kind == "desklamp")?;
            let Place::In(lamp_at) = self.objects[lamp].place else {
                return None;
            };
            return Some(match held_matching {
                None => {
                    let i = self.objects.iter().position(|o| o.kind == task.object)?;
                    self.fetch(i)
                }
                Some(_) if self.at != Some(lamp_at) => {
                    format!("go to {}", self.receptacles[lamp_at].name)
                }
                Some(_) => format!("use {}", self.objects[lamp].name),
            });
        }
        let target = self.target()?;
        if let Some(h) = held_matching {
            if !self.satisfies_treatment(h) {
                let t = task.kind.treatment()?;
                let appliance = (0..self.receptacles.len())
                    .find(|&r| t.appliances().contains(&self.receptacles[r].kind))?;
                if self.at != Some(appliance) {
                    return Some(format!("go to {}", self.receptacles[appliance].name));
                }
                let (o, a) = (&self.objects[h].name, &self.receptacles[appliance].name);
                return Some(format!("{} {o} with {a}", t.verb()));
            }
            let put = format!(
                "put {} in/on {}",
                self.objects[h].name, self.receptacles[target].name
            );
            return Some(self.reach(target, put));
        }
        let placed =
            |i: usize| self.objects[i].place == Place::In(target) && self.satisfies_treatment(i);
        let candidate =
            (0..self.objects.len()).find(|&i| self.objects[i].kind == task.object && !placed(i))?;
        Some(self.fetch(candidate))
    }
}
