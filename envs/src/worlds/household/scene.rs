//! The household world's state and its procedural generation from a seed.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The six ALFWorld task types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    /// Put an object in/on a receptacle.
    PickAndPlace,
    /// Hold an object at a lit desklamp.
    LookAtObjInLight,
    /// Clean an object in a sink basin, then put it in/on a receptacle.
    PickCleanThenPlace,
    /// Heat an object with a microwave or stove burner, then put it in/on a receptacle.
    PickHeatThenPlace,
    /// Cool an object in the fridge, then put it in/on a receptacle.
    PickCoolThenPlace,
    /// Put two objects of one kind in/on the same receptacle.
    PickTwoObjAndPlace,
}

impl TaskType {
    /// All six, in ALFWorld's order.
    pub const ALL: [TaskType; 6] = [
        TaskType::PickAndPlace,
        TaskType::LookAtObjInLight,
        TaskType::PickCleanThenPlace,
        TaskType::PickHeatThenPlace,
        TaskType::PickCoolThenPlace,
        TaskType::PickTwoObjAndPlace,
    ];

    fn rooms(self) -> &'static [Room] {
        match self {
            TaskType::PickAndPlace | TaskType::PickTwoObjAndPlace => &ROOMS,
            TaskType::LookAtObjInLight => &[Room::Bedroom, Room::LivingRoom],
            TaskType::PickCleanThenPlace => &[Room::Kitchen, Room::Bathroom],
            TaskType::PickHeatThenPlace | TaskType::PickCoolThenPlace => &[Room::Kitchen],
        }
    }

    /// The state change the object needs before it is placed.
    pub fn treatment(self) -> Option<Treatment> {
        match self {
            TaskType::PickCleanThenPlace => Some(Treatment::Clean),
            TaskType::PickHeatThenPlace => Some(Treatment::Heat),
            TaskType::PickCoolThenPlace => Some(Treatment::Cool),
            _ => None,
        }
    }
}

/// Cleaning, heating or cooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// With a sink basin (or bathtub basin).
    Clean,
    /// With a microwave or stove burner.
    Heat,
    /// With a fridge.
    Cool,
}

impl Treatment {
    /// The action verb.
    pub fn verb(self) -> &'static str {
        match self {
            Treatment::Clean => "clean",
            Treatment::Heat => "heat",
            Treatment::Cool => "cool",
        }
    }

    /// The receptacle kinds that perform it.
    pub fn appliances(self) -> &'static [&'static str] {
        match self {
            Treatment::Clean => &["sinkbasin", "bathtubbasin"],
            Treatment::Heat => &["microwave", "stoveburner"],
            Treatment::Cool => &["fridge"],
        }
    }
}

/// A room type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// Fridge, microwave, sink, stove.
    Kitchen,
    /// Sofa, side tables, a desklamp.
    LivingRoom,
    /// Bed, desk, a desklamp.
    Bedroom,
    /// Sink, bathtub, toilet.
    Bathroom,
}

const ROOMS: [Room; 4] = [
    Room::Kitchen,
    Room::LivingRoom,
    Room::Bedroom,
    Room::Bathroom,
];

impl Room {
    fn name(self) -> &'static str {
        match self {
            Room::Kitchen => "kitchen",
            Room::LivingRoom => "living room",
            Room::Bedroom => "bedroom",
            Room::Bathroom => "bathroom",
        }
    }

    /// (kind, how many: min..=max, openable, preposition)
    fn receptacles(self) -> &'static [(&'static str, usize, usize, bool, &'static str)] {
        match self {
            Room::Kitchen => &[
                ("cabinet", 2, 4, true, "in"),
                ("countertop", 1, 2, false, "on"),
                ("drawer", 1, 3, true, "in"),
                ("fridge", 1, 1, true, "in"),
                ("microwave", 1, 1, true, "in"),
                ("sinkbasin", 1, 1, false, "in"),
                ("stoveburner", 1, 2, false, "on"),
                ("diningtable", 1, 1, false, "on"),
                ("garbagecan", 1, 1, false, "in"),
            ],
            Room::LivingRoom => &[
                ("sofa", 1, 1, false, "on"),
                ("coffeetable", 1, 1, false, "on"),
                ("sidetable", 1, 2, false, "on"),
                ("drawer", 1, 2, true, "in"),
                ("cabinet", 1, 2, true, "in"),
                ("shelf", 1, 2, false, "on"),
                ("armchair", 1, 1, false, "on"),
                ("garbagecan", 1, 1, false, "in"),
            ],
            Room::Bedroom => &[
                ("bed", 1, 1, false, "on"),
                ("desk", 1, 1, false, "on"),
                ("sidetable", 1, 1, false, "on"),
                ("drawer", 2, 3, true, "in"),
                ("dresser", 1, 1, false, "on"),
                ("shelf", 1, 2, false, "on"),
                ("garbagecan", 1, 1, false, "in"),
            ],
            Room::Bathroom => &[
                ("sinkbasin", 1, 1, false, "in"),
                ("bathtubbasin", 1, 1, false, "in"),
                ("countertop", 1, 1, false, "on"),
                ("cabinet", 2, 3, true, "in"),
                ("drawer", 1, 2, true, "in"),
                ("toilet", 1, 1, false, "on"),
                ("towelholder", 1, 1, false, "on"),
                ("garbagecan", 1, 1, false, "in"),
            ],
        }
    }

    fn objects(self) -> &'static [&'static str] {
        match self {
            Room::Kitchen => &[
                "apple",
                "tomato",
                "potato",
                "egg",
                "lettuce",
                "bread",
                "mug",
                "cup",
                "plate",
                "bowl",
                "pan",
                "pot",
                "knife",
                "fork",
                "spoon",
                "spatula",
                "saltshaker",
                "dishsponge",
            ],
            Room::LivingRoom => &[
                "book",
                "remotecontrol",
                "keychain",
                "creditcard",
                "newspaper",
                "vase",
                "statue",
                "pillow",
                "laptop",
                "watch",
                "box",
                "cellphone",
            ],
            Room::Bedroom => &[
                "book",
                "pen",
                "pencil",
                "cellphone",
                "alarmclock",
                "cd",
                "keychain",
                "creditcard",
                "laptop",
                "pillow",
                "mug",
            ],
            Room::Bathroom => &[
                "soapbar",
                "cloth",
                "spraybottle",
                "toiletpaper",
                "candle",
                "towel",
                "dishsponge",
                "soapbottle",
            ],
        }
    }
}

const FOOD: [&str; 6] = ["apple", "tomato", "potato", "egg", "lettuce", "bread"];

/// Whether objects of `kind` can be given `treatment`.
pub fn accepts(kind: &str, treatment: Treatment) -> bool {
    let food = FOOD.contains(&kind);
    match treatment {
        Treatment::Clean => {
            food || [
                "mug",
                "cup",
                "plate",
                "bowl",
                "pan",
                "pot",
                "knife",
                "fork",
                "spoon",
                "spatula",
                "soapbar",
                "cloth",
                "dishsponge",
            ]
            .contains(&kind)
        }
        Treatment::Heat => food || ["mug", "cup", "plate"].contains(&kind),
        Treatment::Cool => food || ["mug", "cup", "pot", "pan", "bowl"].contains(&kind),
    }
}

/// Objects of these kinds cannot be looked at under a lamp (too large to hold up).
const NOT_FOR_LIGHT: [&str; 3] = ["pillow", "laptop", "box"];

/// A place objects go in or on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receptacle {
    /// Kind, e.g. `fridge`.
    pub kind: &'static str,
    /// Name with its number, e.g. `fridge 1`.
    pub name: String,
    /// Whether it has a door or lid.
    pub openable: bool,
    /// Whether it is open (always true for receptacles that are not openable).
    pub open: bool,
    /// `in` or `on`.
    pub preposition: &'static str,
}

/// Where an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// In or on the receptacle with this index.
    In(usize),
    /// In the agent's hands.
    Held,
}

/// A thing in the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Kind, e.g. `apple`.
    pub kind: &'static str,
    /// Name with its number, e.g. `apple 2`.
    pub name: String,
    /// Where it is.
    pub place: Place,
    /// Whether it has been cleaned.
    pub clean: bool,
    /// Whether it has been heated (and not cooled since).
    pub hot: bool,
    /// Whether it has been cooled (and not heated since).
    pub cool: bool,
    /// Whether it is a switched-on desklamp.
    pub lit: bool,
}

impl Object {
    /// Whether the agent can pick it up (desklamps stay where they are).
    pub fn portable(&self) -> bool {
        self.kind != "desklamp"
    }
}

/// What the agent must achieve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Which of the six types.
    pub kind: TaskType,
    /// The object kind.
    pub object: &'static str,
    /// The receptacle kind (none for looking at an object in light).
    pub receptacle: Option<&'static str>,
}

impl Task {
    /// The goal as ALFWorld words it.
    pub fn describe(&self) -> String {
        let r = self.receptacle.unwrap_or("");
        let o = self.object;
        match self.kind {
            TaskType::PickAndPlace => format!("put a {o} in/on {r}."),
            TaskType::LookAtObjInLight => format!("look at {o} under the desklamp."),
            TaskType::PickCleanThenPlace => format!("put a clean {o} in/on {r}."),
            TaskType::PickHeatThenPlace => format!("put a hot {o} in/on {r}."),
            TaskType::PickCoolThenPlace => format!("put a cool {o} in/on {r}."),
            TaskType::PickTwoObjAndPlace => format!("put two {o} in/on {r}."),
        }
    }
}

/// The whole state of one episode's room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scene {
    /// Room type name, e.g. `kitchen`.
    pub room: &'static str,
    /// Receptacles, in the order the room description lists them.
    pub receptacles: Vec<Receptacle>,
    /// Objects (desklamps included).
    pub objects: Vec<Object>,
    /// The receptacle the agent stands at (`None`: the middle of the room).
    pub at: Option<usize>,
    /// The task.
    pub task: Task,
}

impl Scene {
    /// Generates the scene for `seed`, with a task drawn from `task_types` (all six when
    /// empty). Every generated task is solvable and not already solved.
    pub fn generate(seed: u64, task_types: &[TaskType]) -> Scene {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xA1F0_4D3E);
        let types = if task_types.is_empty() {
            &TaskType::ALL[..]
        } else {
            task_types
        };
        let kind = *types.choose(&mut rng).unwrap_or(&TaskType::PickAndPlace);
        let room = *kind.rooms().choose(&mut rng).unwrap_or(&Room::Kitchen);

        let mut receptacles = Vec::new();
        for &(rkind, min, max, openable, preposition) in room.receptacles() {
            for n in 1..=rng.random_range(min..=max) {
                receptacles.push(Receptacle {
                    kind: rkind,
                    name: format!("{rkind} {n}"),
                    openable,
                    open: !openable,
                    preposition,
                });
            }
        }

        let treatment = kind.treatment();
        let candidates: Vec<&'static str> = room
            .objects()
            .iter()
            .copied()
            .filter(|o| treatment.is_none_or(|t| accepts(o, t)))
            .filter(|o| kind != TaskType::LookAtObjInLight || !NOT_FOR_LIGHT.contains(o))
            .collect();
        let object = *candidates.choose(&mut rng).unwrap_or(&room.objects()[0]);
        let receptacle = if kind == TaskType::LookAtObjInLight {
            None
        } else {
            let excluded: &[&str] = match treatment {
                Some(t) => t.appliances(),
                None => &[],
            };
            let mut kinds: Vec<&'static str> = room
                .receptacles()
                .iter()
                .map(|r| r.0)
                .filter(|k| !excluded.contains(k) && *k != "garbagecan")
                .collect();
            kinds.dedup();
            Some(*kinds.choose(&mut rng).unwrap_or(&"countertop"))
        };
        let task = Task {
            kind,
            object,
            receptacle,
        };

        // Where objects may start: not in a receptacle of the task's kind.
        let starts: Vec<usize> = (0..receptacles.len())
            .filter(|&i| Some(receptacles[i].kind) != receptacle)
            .collect();
        let mut kinds_to_place: Vec<&'static str> = vec![object];
        if kind == TaskType::PickTwoObjAndPlace {
            kinds_to_place.push(object);
        }
        let distractors = rng.random_range(6..=12);
        for _ in 0..distractors {
            kinds_to_place.push(*room.objects().choose(&mut rng).unwrap_or(&object));
        }
        kinds_to_place.shuffle(&mut rng);
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        let mut objects = Vec::new();
        for okind in kinds_to_place {
            let n = counts.entry(okind).or_default();
            *n += 1;
            let place = if okind == object {
                *starts.choose(&mut rng).unwrap_or(&0)
            } else {
                rng.random_range(0..receptacles.len())
            };
            objects.push(Object {
                kind: okind,
                name: format!("{okind} {n}"),
                place: Place::In(place),
                clean: false,
                hot: false,
                cool: false,
                lit: false,
            });
        }
        if matches!(room, Room::Bedroom | Room::LivingRoom) {
            let holders: Vec<usize> = (0..receptacles.len())
                .filter(|&i| ["desk", "sidetable"].contains(&receptacles[i].kind))
                .collect();
            let holder = *holders.choose(&mut rng).unwrap_or(&0);
            objects.push(Object {
                kind: "desklamp",
                name: "desklamp 1".into(),
                place: Place::In(holder),
                clean: false,
                hot: false,
                cool: false,
                lit: false,
            });
        }
        Scene {
            room: room.name(),
            receptacles,
            objects,
            at: None,
            task,
        }
    }

    /// Index of the object the agent holds.
    pub fn held(&self) -> Option<usize> {
        self.objects.iter().position(|o| o.place == Place::Held)
    }

    /// Indices of the objects in/on receptacle `r`.
    pub fn contents(&self, r: usize) -> Vec<usize> {
        (0..self.objects.len())
            .filter(|&i| self.objects[i].place == Place::In(r))
            .collect()
    }

    /// The task's subgoals, in order, and whether each holds now: an object of the task's kind
    /// held; for a task with a treatment (clean, heat, cool), an object of that kind treated
    /// (held or not); then the agent at the goal's place with that object (treated) in hand: a
    /// receptacle of the task's kind, or for `look_at_obj_in_light` the one the desk lamp is on.
    /// The last step (put it down, switch the lamp on) is the task itself. ALFWorld-style
    /// progress, for `subgoal_reward`.
    pub fn subgoals(&self) -> Vec<bool> {
        let task = &self.task;
        let held = self.held().map(|h| &self.objects[h]);
        let mut out = vec![held.is_some_and(|o| o.kind == task.object)];
        if task.kind.treatment().is_some() {
            out.push(self.objects.iter().any(|o| self.is_ready(o)));
        }
        let at_goal = self.at.is_some_and(|r| match task.kind {
            TaskType::LookAtObjInLight => self
                .contents(r)
                .iter()
                .any(|&i| self.objects[i].kind == "desklamp"),
            _ => Some(self.receptacles[r].kind) == task.receptacle,
        });
        out.push(at_goal && held.is_some_and(|o| self.is_ready(o)));
        out
    }

    /// Whether `o` is what the task asks to place or look at: an object of the task's kind,
    /// with the task's treatment (clean, heat, cool) when it has one.
    fn is_ready(&self, o: &Object) -> bool {
        o.kind == self.task.object
            && match self.task.kind.treatment() {
                Some(Treatment::Clean) => o.clean,
                Some(Treatment::Heat) => o.hot,
                Some(Treatment::Cool) => o.cool,
                None => true,
            }
    }

    /// Whether the task is achieved.
    pub fn goal_reached(&self) -> bool {
        let task = &self.task;
        match task.kind {
            TaskType::LookAtObjInLight => {
                let holding = self
                    .held()
                    .is_some_and(|h| self.objects[h].kind == task.object);
                let lit_here = self.at.is_some_and(|r| {
                    self.contents(r)
                        .iter()
                        .any(|&i| self.objects[i].kind == "desklamp" && self.objects[i].lit)
                });
                holding && lit_here
            }
            _ => {
                let needed = if task.kind == TaskType::PickTwoObjAndPlace {
                    2
                } else {
                    1
                };
                (0..self.receptacles.len()).any(|r| {
                    Some(self.receptacles[r].kind) == task.receptacle
                        && self
                            .contents(r)
                            .iter()
                            .filter(|&&i| self.is_ready(&self.objects[i]))
                            .count()
                            >= needed
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_covers_all_task_types() {
        assert_eq!(Scene::generate(11, &[]), Scene::generate(11, &[]));
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..300 {
            let s = Scene::generate(seed, &[]);
            seen.insert(format!("{:?}", s.task.kind));
            assert!(!s.goal_reached(), "seed {seed} starts solved");
            assert!(s.receptacles.iter().filter(|r| r.openable).all(|r| !r.open));
        }
        assert_eq!(seen.len(), 6, "{seen:?}");
    }

    #[test]
    fn tasks_fit_their_rooms() {
        for seed in 0..300 {
            let s = Scene::generate(seed, &[]);
            let kinds: Vec<&str> = s.receptacles.iter().map(|r| r.kind).collect();
            if let Some(t) = s.task.kind.treatment() {
                assert!(
                    t.appliances().iter().any(|a| kinds.contains(a)),
                    "seed {seed}"
                );
                assert!(accepts(s.task.object, t));
            }
            if s.task.kind == TaskType::LookAtObjInLight {
                assert!(s.objects.iter().any(|o| o.kind == "desklamp"));
            }
            let needed = if s.task.kind == TaskType::PickTwoObjAndPlace {
                2
            } else {
                1
            };
            assert!(s.objects.iter().filter(|o| o.kind == s.task.object).count() >= needed);
        }
    }

    #[test]
    fn task_types_can_be_restricted() {
        for seed in 0..50 {
            let s = Scene::generate(seed, &[TaskType::PickCoolThenPlace]);
            assert_eq!(s.task.kind, TaskType::PickCoolThenPlace);
            assert_eq!(s.room, "kitchen");
        }
    }
}
