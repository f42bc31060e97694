"""Write examples/catalog.jsonl: a deterministic retail catalogue for the gpupool demo.

Each product type below has a few variants (an adjective plus what makes that variant
different) and a couple of "use" sentences. Every variant becomes one product whose
name is "<brand> <variant> <type>" (or "<brand> <variant>" where the type is empty
because the variant already names the product) and whose description combines the variant's
feature clause with one use sentence, so the text reads like a real listing and
semantic search over it is meaningful. A seeded RNG picks brands, use sentences and
prices, so running this script again produces byte-identical output.

    python examples/make_catalog.py            # writes examples/catalog.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20240611

# category -> (sku prefix, brands, product types)
# product type: (noun, (low, high) price in dollars, [(variant, feature clause)], [use sentences])
ProductType = tuple[str, tuple[int, int], list[tuple[str, str]], list[str]]
CATALOG: dict[str, tuple[str, list[str], list[ProductType]]] = {
    "shoes": ("SHO", ["Trailcrest", "Northpace", "Urbanstep", "Kestrel"], [
        ("Hiking Boots", (89, 189), [
            ("Waterproof",
             "with a sealed membrane and a deep-lugged rubber sole that grips wet rock"),
            ("Insulated Winter",
             "lined with synthetic insulation to keep feet warm in snow and slush"),
            ("Lightweight", "with a breathable mesh upper for fast day hikes in dry weather"),
        ], ["Built for long days on rough trails.", "A dependable choice for backpacking trips."]),
        ("Running Shoes", (69, 159), [
            ("Cushioned Road", "with a soft foam midsole that absorbs impact on pavement"),
            ("Trail", "with a rock plate and aggressive tread for muddy, uneven paths"),
            ("Race-Day", "with a carbon-fibre plate and a featherweight knit upper"),
        ], ["Made for daily training runs.", "Ideal for runners chasing a new personal best."]),
        ("Sneakers", (49, 119), [
            ("White Leather",
             "with a clean minimalist silhouette and a cupsole that goes with anything"),
            ("Canvas High-Top", "with a vulcanised rubber sole and classic lace-up styling"),
            ("Slip-On", "with elastic side panels so they go on without tying laces"),
        ], ["An easy everyday shoe for casual outfits.",
            "Comfortable enough to wear all day in the city."]),
        ("Sandals", (25, 79), [
            ("Sport", "with adjustable straps and a quick-drying footbed for rivers and beaches"),
            ("Leather Slide", "with a contoured cork footbed that moulds to your foot"),
        ], ["Perfect for summer holidays.", "Great for warm days at the beach or the pool."]),
        ("Dress Shoes", (79, 199), [
            ("Oxford", "in polished calf leather with a stitched leather sole"),
            ("Suede Loafer", "with a soft unstructured build and a low stacked heel"),
        ], ["Smart enough for weddings and the office.",
            "A polished finish for formal occasions."]),
        ("Kids' Shoes", (29, 59), [
            ("Light-Up", "with LEDs in the sole that flash with every step"),
            ("Velcro School", "with hook-and-loop straps little ones can fasten themselves"),
        ], ["Tough enough for the playground.", "Easy for children to put on by themselves."]),
        ("Rain Boots", (35, 89), [
            ("Rubber", "made from natural rubber and fully waterproof up to mid-calf"),
            ("Chelsea", "with a low ankle cut and stretchy side gussets"),
        ], ["Keeps feet dry through puddles and muddy gardens.",
            "Made for wet autumn and spring days."]),
        ("Walking Shoes", (59, 139), [
            ("Wide-Fit", "with a roomy toe box and arch support for all-day comfort"),
            ("Waterproof Leather", "with a sealed lining that keeps feet dry on wet pavements"),
        ], ["Made for long walks and sightseeing.", "Comfortable from morning to night."]),
        ("Slippers", (19, 59), [
            ("Sheepskin", "lined with genuine shearling and a grippy rubber sole"),
            ("Memory Foam", "with a knitted upper and a cushioned footbed"),
        ], ["Keeps feet warm around the house.", "A cosy gift for winter evenings."]),
        ("Winter Boots", (79, 199), [
            ("Snow", "rated to minus 30 degrees with a removable felt liner"),
            ("Lace-Up Leather", "with a warm wool lining and an anti-slip sole for icy streets"),
        ], ["Built for snowy, icy winters.", "Keeps feet warm and dry all season."]),
        ("Football Boots", (49, 189), [
            ("Firm-Ground", "with moulded studs and a lightweight synthetic upper"),
        ], ["Made for quick turns on grass pitches.", "Precision touch on the ball."]),
    ]),
    "outerwear": ("OUT", ["Fjellvik", "Harbor & Pine", "Summitline", "Coldfront"], [
        ("Rain Jacket", (59, 179), [
            ("Packable", "in a lightweight waterproof shell that folds into its own pocket"),
            ("Three-Layer", "with fully taped seams and pit zips for venting on steep climbs"),
        ], ["Stays dry in sudden downpours.",
            "A must-have layer for hiking in changeable weather."]),
        ("Down Jacket", (119, 299), [
            ("Puffer", "filled with responsibly sourced 700-fill goose down"),
            ("Long Parka", "with a fur-trimmed hood and down fill that reaches below the knee"),
            ("Ultralight", "weighing under 300 grams yet surprisingly warm"),
        ], ["Made for freezing winter days.", "Keeps you warm in sub-zero temperatures."]),
        ("Fleece Jacket", (39, 99), [
            ("Full-Zip", "in soft polar fleece with two zippered hand pockets"),
            ("Sherpa-Lined", "with a cosy sherpa pile lining and a stand-up collar"),
        ], ["A warm mid-layer for chilly evenings.", "Great for camping trips and autumn walks."]),
        ("Softshell Jacket", (79, 159), [
            ("Stretch", "with a wind-resistant, water-repellent four-way-stretch fabric"),
            ("Hooded", "with an adjustable hood and a brushed inner face for warmth"),
        ], ["Moves with you on bike rides and climbs.",
            "Handles wind and light drizzle with ease."]),
        ("Wool Coat", (149, 349), [
            ("Tailored", "cut from a wool-cashmere blend with a notched lapel"),
            ("Double-Breasted", "in heavy melton wool with horn buttons"),
        ], ["An elegant layer for the winter commute.", "Looks sharp over a suit or knitwear."]),
        ("Denim Jacket", (49, 109), [
            ("Classic", "in rigid indigo denim with copper buttons"),
            ("Borg-Collar", "with a warm faux-shearling collar and lining"),
        ], ["A timeless piece for spring and autumn.",
            "Pairs well with almost any casual outfit."]),
        ("Ski Jacket", (149, 329), [
            ("Insulated", "with a powder skirt, helmet-compatible hood and a lift-pass pocket"),
            ("Shell", "with a breathable waterproof membrane for layering in deep snow"),
        ], ["Built for long days on the slopes.", "Ready for skiing and snowboarding holidays."]),
        ("Kids' Snowsuit", (59, 129), [
            ("One-Piece", "with a waterproof outer, warm padding and reflective trims"),
        ], ["Keeps children warm while sledging and building snowmen.",
            "Made for snowy days outside."]),
        ("Gilet", (49, 129), [
            ("Quilted Down", "with a warm down fill and zipped hand pockets"),
            ("Fleece", "in recycled polar fleece with a high collar"),
        ], ["A handy extra layer for cool mornings.", "Keeps your core warm without bulk."]),
        ("Trench Coat", (129, 279), [
            ("Classic", "in water-repellent cotton gabardine with a belted waist"),
        ], ["A timeless coat for rainy city days.", "Smart over both suits and jeans."]),
        ("Windbreaker", (39, 99), [
            ("Lightweight", "in a ripstop nylon shell that packs into a pouch"),
            ("Retro Colour-Block", "with a half zip and an elasticated hem"),
        ], ["Blocks chilly gusts on runs and bike rides.", "Great for breezy spring days."]),
    ]),
    "apparel": ("APP", ["Loomhouse", "Everyday Co.", "Marlowe", "Tidewater"], [
        ("T-Shirt", (12, 35), [
            ("Organic Cotton", "with a relaxed fit and a soft, breathable feel"),
            ("Merino", "in odour-resistant merino wool that breathes on warm days"),
            ("Graphic Dinosaur", "printed with a roaring T-rex for young dinosaur fans"),
        ], ["An everyday wardrobe staple.", "Easy to layer or wear on its own."]),
        ("Jeans", (45, 129), [
            ("Slim-Fit", "in stretch selvedge denim with a tapered leg"),
            ("Relaxed Straight", "in heavyweight denim with a roomy straight leg"),
        ], ["Built to age beautifully with wear.", "A versatile pair for everyday wear."]),
        ("Sweater", (39, 149), [
            ("Cashmere Crewneck", "knitted from pure Mongolian cashmere"),
            ("Cable-Knit", "in chunky lambswool with traditional cable patterns"),
            ("Christmas", "knitted with snowflakes and reindeer for festive parties"),
        ], ["Keeps you cosy on cold days.", "A warm favourite for winter evenings."]),
        ("Pyjama Set", (29, 69), [
            ("Flannel", "in brushed cotton flannel with a checked pattern"),
            ("Kids' Dinosaur", "covered in friendly cartoon dinosaurs, sized for ages 3 to 10"),
        ], ["Made for lazy weekend mornings.", "Soft and comfortable for a good night's sleep."]),
        ("Leggings", (29, 89), [
            ("High-Waisted Yoga", "in a buttery-soft fabric with a hidden waistband pocket"),
            ("Thermal Running", "with a brushed inner face and reflective details for winter runs"),
        ], ["Moves with you through every stretch.", "Great for workouts and lounging alike."]),
        ("Dress", (49, 159), [
            ("Linen Summer", "in breathable washed linen with a flowing midi skirt"),
            ("Wrap", "in a floral print with a flattering tie waist"),
        ], ["Light and airy for hot weather.", "Works for garden parties and holidays."]),
        ("Socks", (9, 25), [
            ("Merino Hiking", "with cushioned soles and merino wool that wicks away sweat"),
            ("Cotton Crew", "sold as a six-pack in assorted colours"),
        ], ["Keeps feet comfortable mile after mile.", "A drawer essential."]),
        ("Beanie", (15, 39), [
            ("Wool", "in a ribbed knit with a fold-over cuff"),
            ("Pom-Pom", "with a fluffy faux-fur pom-pom and a fleece lining"),
        ], ["Keeps your ears warm in winter.", "A cosy accessory for cold mornings."]),
        ("Hoodie", (35, 89), [
            ("Heavyweight", "in brushed-back cotton fleece with a kangaroo pocket"),
            ("Zip-Up", "in a soft cotton blend with ribbed cuffs"),
        ], ["A cosy favourite for weekends.", "Layers easily under a jacket."]),
        ("Shorts", (25, 59), [
            ("Chino", "in stretch cotton twill with a 7-inch inseam"),
            ("Running", "with a built-in liner and a zip pocket for keys"),
            ("Board", "in quick-drying fabric for swimming and surfing"),
        ], ["Made for warm summer days.", "Comfortable from the beach to the barbecue."]),
        ("Shirt", (35, 99), [
            ("Oxford Button-Down", "in crisp cotton oxford cloth"),
            ("Flannel", "in a warm checked cotton flannel"),
            ("Linen", "in breathable linen for hot days"),
        ], ["Works dressed up or down.", "A versatile shirt for work and weekends."]),
        ("Swimsuit", (29, 79), [
            ("One-Piece", "in chlorine-resistant fabric with a supportive lining"),
            ("Kids' Rash Guard", "with UPF 50 sun protection and long sleeves"),
        ], ["Ready for the pool and the beach.", "Made for sunny holidays by the sea."]),
        ("Scarf", (19, 89), [
            ("Cashmere", "woven from soft cashmere in a classic check"),
            ("Silk", "printed with a bold botanical pattern"),
        ], ["Adds warmth and style to any outfit.", "A thoughtful gift for the winter season."]),
    ]),
    "kitchen": ("KIT", ["Copperleaf", "Hearth & Home", "Chefwise", "Oakmere"], [
        ("Frying Pan", (25, 119), [
            ("Non-Stick", "with a PFOA-free ceramic coating so eggs slide right off"),
            ("Cast Iron", "pre-seasoned and built to last for generations"),
            ("Stainless Steel",
             "with a tri-ply base for even searing on any hob, including induction"),
        ], ["Perfect for omelettes, pancakes and stir-fries.",
            "A workhorse pan for everyday cooking."]),
        ("Chef's Knife", (39, 189), [
            ("Japanese", "with a razor-sharp VG-10 steel blade and a pakkawood handle"),
            ("German", "forged from a single piece of high-carbon stainless steel"),
        ], ["Slices, dices and minces with ease.", "The one knife every home cook needs."]),
        ("Coffee Maker", (49, 299), [
            ("Pour-Over", "in borosilicate glass with a reusable stainless filter"),
            ("Espresso", "with a 15-bar pump and a steam wand for frothing milk"),
            ("Drip", "with a programmable timer and a thermal carafe that keeps coffee hot"),
        ], ["Brews café-quality coffee at home.", "Start every morning with a great cup."]),
        ("Blender", (59, 249), [
            ("High-Speed", "with a 1500-watt motor that crushes ice and frozen fruit"),
            ("Personal", "with two to-go cups for single-serve smoothies"),
        ], ["Makes silky smoothies, soups and sauces.",
            "Great for quick breakfasts on busy mornings."]),
        ("Dutch Oven", (69, 299), [
            ("Enamelled Cast Iron", "with a tight-fitting lid that locks in moisture"),
        ], ["Ideal for slow-cooked stews, braises and crusty bread.",
            "Goes from hob to oven to table."]),
        ("Cutting Board", (19, 69), [
            ("End-Grain Walnut", "that is gentle on knife edges and has a juice groove"),
            ("Bamboo", "that is lightweight, sturdy and easy to clean"),
        ], ["A handsome board for prep and serving.",
            "A kitchen essential for everyday chopping."]),
        ("Electric Kettle", (29, 99), [
            ("Gooseneck", "with precise temperature control for pour-over coffee and green tea"),
            ("Glass", "with a blue LED glow and automatic shut-off"),
        ], ["Boils water in minutes.", "A quick cup of tea whenever you want one."]),
        ("Air Fryer", (69, 199), [
            ("Digital", "with a 5.5-litre basket and eight one-touch presets"),
            ("Dual-Basket", "with two independent drawers to cook two foods at once"),
        ], ["Crispy fries and wings with little or no oil.", "Fast, healthier weeknight dinners."]),
        ("Food Storage Containers", (19, 49), [
            ("Glass", "in a ten-piece set with leak-proof snap-lock lids"),
        ], ["Keeps leftovers fresh and makes meal prep easy.",
            "Oven-, microwave- and dishwasher-safe."]),
        ("Baking Set", (25, 79), [
            ("Non-Stick", "with a loaf tin, muffin tray, cake pans and a cooling rack"),
            ("Kids' Cupcake", "with silicone cases, sprinkles and a child-sized apron"),
        ], ["Everything you need to start baking at home.",
            "Makes weekend baking fun for the family."]),
        ("Saucepan Set", (79, 249), [
            ("Stainless Steel", "of three pans with glass lids and cool-touch handles"),
            ("Non-Stick", "with a hard-anodised body and stay-cool handles"),
        ], ["Covers everything from sauces to pasta.", "A complete set for a new kitchen."]),
        ("Stand Mixer", (199, 499), [
            ("Tilt-Head", "with a 5-litre bowl, dough hook, whisk and beater"),
        ], ["Makes bread, cakes and cookies effortless.", "A baker's best friend."]),
        ("Toaster", (29, 119), [
            ("Four-Slice", "with wide slots for bagels and a defrost setting"),
            ("Retro", "in cream enamel with a crumb tray and browning dial"),
        ], ["Golden toast every morning.", "A charming addition to any countertop."]),
        ("Mixing Bowls", (19, 59), [
            ("Nesting", "in a set of five stainless steel bowls with lids"),
        ], ["Stack neatly and save cupboard space.", "Essential for baking and salads."]),
        ("Teapot", (19, 69), [
            ("Cast Iron", "with an enamelled interior and a removable infuser"),
            ("Glass", "with a stainless steel loose-leaf strainer"),
        ], ["Brews a perfect pot of loose-leaf tea.", "Lovely for afternoon tea with friends."]),
        ("Rice Cooker", (39, 149), [
            ("Fuzzy Logic", "that cooks white, brown and sushi rice perfectly"),
        ], ["Fluffy rice at the touch of a button.", "Keeps rice warm until dinner is ready."]),
    ]),
    "electronics": ("ELE", ["Voltix", "Sonara", "Lumen Labs", "Pixelcraft"], [
        ("Headphones", (59, 349), [
            ("Noise-Cancelling Wireless",
             "with active noise cancellation and 30-hour battery life"),
            ("Over-Ear Studio", "with large memory-foam ear cushions and rich, detailed sound"),
        ], ["Ideal for flights, commutes and focused work.",
            "Immersive sound for music and films."]),
        ("Earbuds", (39, 249), [
            ("Sport", "with secure ear hooks and a sweat-proof IPX5 rating"),
            ("True Wireless", "with a pocketable charging case and touch controls"),
        ], ["Music and calls without the cables.", "Great for workouts and commutes."]),
        ("Bluetooth Speaker", (29, 199), [
            ("Waterproof", "rated IP67 so it survives dunks in the pool"),
            ("Smart", "with a built-in voice assistant and multi-room audio"),
        ], ["Fills a room or a campsite with sound.", "Take your music anywhere."]),
        ("Smartwatch", (129, 399), [
            ("Fitness", "with GPS, heart-rate tracking and sleep monitoring"),
            ("Classic", "with an always-on AMOLED display and a stainless steel case"),
        ], ["Tracks workouts and notifications from your wrist.",
            "Your health stats at a glance."]),
        ("Laptop", (499, 1899), [
            ("Ultrabook", "with a 14-inch display, 16 GB of RAM and all-day battery life"),
            ("Gaming", "with a dedicated graphics card and a 165 Hz screen"),
        ], ["Powerful enough for work, study and creative projects.",
            "Handles demanding software with ease."]),
        ("Tablet", (199, 799), [
            ("10-Inch", "with a sharp display and stylus support for note-taking"),
            ("Kids'", "with a shock-proof case and parental controls"),
        ], ["Great for reading, streaming and sketching.",
            "Entertainment and learning on the go."]),
        ("Phone Charger", (15, 69), [
            ("65 W USB-C", "with gallium-nitride technology in a pocket-sized brick"),
            ("Wireless", "with a magnetic pad that charges phones and earbuds"),
        ], ["Charges a phone from empty in about an hour.",
            "A tidy, fast way to top up your devices."]),
        ("Power Bank", (25, 89), [
            ("20,000 mAh", "that can recharge a phone four or five times"),
            ("Solar", "with a rugged shell and a built-in solar panel for camping"),
        ], ["Never run out of battery while travelling.", "Keeps your devices alive off-grid."]),
        ("Camera", (299, 1499), [
            ("Mirrorless", "with a 24-megapixel sensor and interchangeable lenses"),
            ("Action", "that shoots stabilised 4K video and is waterproof to 10 metres"),
        ], ["Captures holidays and adventures in stunning detail.", "Make memories you can keep."]),
        ("Instant Camera", (59, 149), [
            ("Retro", "that prints credit-card-sized photos in seconds"),
        ], ["Make memories you can hold in your hand.", "A fun camera for parties and holidays."]),
        ("Mechanical Keyboard", (69, 199), [
            ("Wireless", "with hot-swappable switches and RGB backlighting"),
        ], ["Satisfying to type on for hours.", "A favourite of programmers and gamers."]),
        ("", (49, 199), [
            ("Compact Smart Speaker",
             "with a voice assistant that controls lights and plays music"),
            ("Smart Display", "with a 10-inch screen for video calls and recipes"),
        ], ["Control your smart home with your voice.", "Music, timers and news, hands-free."]),
        ("Monitor", (149, 699), [
            ("27-Inch 4K", "with accurate colours and a USB-C connection"),
            ("Curved Gaming", "with a 240 Hz refresh rate and 1 ms response time"),
        ], ["A sharp, spacious screen for work and play.", "Upgrade your desk setup."]),
        ("E-Reader", (99, 249), [
            ("Waterproof", "with a glare-free 7-inch screen and warm front light"),
        ], ["Thousands of books in your pocket.", "Read comfortably by the pool or in bed."]),
        ("Drone", (199, 999), [
            ("Folding Camera", "that shoots 4K video and flies for 30 minutes"),
        ], ["Capture breathtaking aerial footage.", "Easy to fly, even for beginners."]),
        ("Video Doorbell", (59, 199), [
            ("Wireless", "with HD video, night vision and two-way talk"),
        ], ["See who is at the door from anywhere.", "Adds security to your front door."]),
    ]),
    "toys": ("TOY", ["Wonderbox", "Little Explorers", "Brickwell", "Playfield"], [
        ("", (14, 59), [
            ("Roaring T-Rex Dinosaur", "with a moving jaw, lights and realistic roaring sounds"),
            ("Dinosaur Figure Set",
             "of twelve hand-painted prehistoric figures, from triceratops to stegosaurus"),
            ("Dinosaur Fossil Dig Kit",
             "where kids chisel plaster to uncover dinosaur skeleton bones"),
            ("Plush Triceratops", "that is soft, huggable and machine-washable"),
        ], ["A perfect gift for young dinosaur fans.", "Budding palaeontologists will adore it."]),
        ("Building Blocks", (19, 129), [
            ("Classic", "in a 500-piece tub of interlocking bricks in bright colours"),
            ("Space Station", "that build a detailed orbital station with astronaut minifigures"),
            ("Magnetic", "that snap together to make towers, castles and rockets"),
        ], ["Encourages creativity and hours of building.",
            "A STEM toy that grows with your child."]),
        ("Doll", (19, 79), [
            ("Fashion", "with three outfits, shoes and a hairbrush"),
            ("Baby", "that drinks from a bottle, cries and comes with a blanket"),
        ], ["Inspires imaginative role play.", "A lovely gift for birthdays."]),
        ("Remote Control Car", (29, 119), [
            ("Off-Road", "with big rubber tyres and four-wheel drive for grass and gravel"),
            ("Stunt", "that flips, spins and drives on both sides"),
        ], ["Hours of outdoor fun for kids and grown-ups.", "Races along at high speed."]),
        ("Board Game", (19, 59), [
            ("Family Strategy", "where players build railways across a map, for ages 8 and up"),
            ("Cooperative", "in which everyone works together to stop an island from sinking"),
            ("Trivia", "with 2,000 questions on science, history and pop culture"),
        ], ["Great for family game night.", "Fun for two to six players."]),
        ("Jigsaw Puzzle", (12, 35), [
            ("1000-Piece", "showing a colourful map of the world"),
            ("Floor", "with 48 giant pieces featuring jungle animals"),
        ], ["A relaxing challenge for a rainy afternoon.", "Builds patience and problem-solving."]),
        ("Science Kit", (24, 69), [
            ("Chemistry", "with safe experiments that fizz, glow and change colour"),
            ("Crystal Growing", "for growing sparkling crystals in seven colours"),
            ("Robotics", "for building and coding a small rover with sensors"),
        ], ["Turns curious kids into young scientists.", "Learning disguised as play."]),
        ("", (12, 39), [
            ("Teddy Bear", "with a soft plush coat and a satin bow"),
            ("Unicorn Plush", "with a glittery horn and a rainbow mane"),
        ], ["A cuddly bedtime companion.", "A sweet gift for babies and toddlers."]),
        ("Wooden Train Set", (39, 99), [
            ("Starter", "with bridges, tunnels and magnetic carriages"),
        ], ["A classic toy that lasts for generations.", "Builds fine motor skills in toddlers."]),
        ("Art Set", (15, 59), [
            ("Deluxe", "with 150 crayons, markers, pastels and paints in a wooden case"),
            ("Washable Finger Paint", "in six bright, non-toxic colours for toddlers"),
        ], ["Sparks creativity in young artists.", "Hours of colourful crafting fun."]),
        ("", (39, 149), [
            ("Balance Bike", "with no pedals to help toddlers learn to ride"),
            ("Kids' Scooter", "with three light-up wheels and an adjustable handlebar"),
        ], ["Builds balance and confidence outdoors.", "Perfect for trips to the park."]),
        ("Play Kitchen", (59, 179), [
            ("Wooden", "with an oven, sink, clicking hob knobs and pretend pans"),
        ], ["Inspires hours of pretend cooking.", "A favourite for imaginative role play."]),
        ("Action Figure", (12, 39), [
            ("Superhero", "with 20 points of articulation and a cape"),
            ("Astronaut", "with a detachable helmet and a moon rover"),
        ], ["Ready for epic adventures.", "Collect them all for bigger stories."]),
    ]),
    "garden": ("GAR", ["Greenthumb", "Meadowlark", "Rootstock", "Fernhill"], [
        ("Garden Hose", (25, 79), [
            ("Expandable", "that stretches to 30 metres and shrinks back for storage"),
            ("Reinforced Rubber", "that resists kinks and cracking in the sun"),
        ], ["Makes watering the garden quick and easy.", "Reaches every corner of the yard."]),
        ("Pruning Shears", (15, 49), [
            ("Bypass", "with hardened steel blades for clean cuts on live stems"),
            ("Ratchet", "that multiply your grip strength on thick branches"),
        ], ["Keeps roses, shrubs and fruit trees tidy.", "An essential tool for any gardener."]),
        ("Lawn Mower", (149, 599), [
            ("Cordless", "with a 40 V battery and a 42 cm cutting deck"),
            ("Robotic", "that mows automatically on a schedule and docks to recharge"),
            ("Push Reel", "that cuts grass quietly without fuel or electricity"),
        ], ["Keeps your lawn neat with little effort.", "A greener way to cut the grass."]),
        ("Raised Garden Bed", (49, 149), [
            ("Cedar", "made from rot-resistant cedar planks"),
            ("Galvanised Steel", "that is rust-proof and easy to assemble"),
        ], ["Perfect for growing vegetables, herbs and flowers.",
            "Gardening without bending to the ground."]),
        ("Planter", (19, 89), [
            ("Self-Watering", "with a hidden reservoir that keeps soil moist for up to two weeks"),
            ("Terracotta", "hand-thrown with a drainage hole and a matching saucer"),
        ], ["Ideal for patios, balconies and windowsills.", "Keeps plants happy with less fuss."]),
        ("Seed Kit", (9, 29), [
            ("Herb", "with basil, parsley, coriander and chives seeds plus peat pots"),
            ("Tomato", "with six heirloom varieties to grow from seed"),
            ("Wildflower", "with a pollinator-friendly mix for bees and butterflies"),
        ], ["Grow your own from seed this spring.", "A rewarding project for beginner gardeners."]),
        ("Lights", (19, 79), [
            ("Solar Path", "that charge by day and glow automatically at dusk"),
            ("String", "with warm-white Edison bulbs on a weatherproof cable"),
        ], ["Adds a warm glow to patios and garden paths.",
            "Perfect for summer evenings outdoors."]),
        ("Bird Feeder", (15, 49), [
            ("Squirrel-Proof", "with a weight-activated perch that closes the seed ports"),
            ("Window", "that sticks to glass with strong suction cups"),
        ], ["Attracts finches, tits and sparrows.", "Brings wildlife right to your window."]),
        ("Compost Bin", (39, 119), [
            ("Tumbling", "with two chambers that turn easily to speed up composting"),
        ], ["Turns kitchen scraps into rich soil.", "An easy step towards a zero-waste garden."]),
        ("Garden Gloves", (9, 29), [
            ("Thorn-Proof", "with long leather gauntlets for pruning roses"),
            ("Nitrile-Coated", "with a breathable knit back and grippy palms"),
        ], ["Protects hands while digging and weeding.", "Comfortable for hours of gardening."]),
        ("Wheelbarrow", (69, 179), [
            ("Steel", "with a 100-litre tray and a puncture-proof tyre"),
        ], ["Moves soil, mulch and compost with ease.", "A sturdy helper for big garden jobs."]),
        ("Patio Furniture Set", (299, 999), [
            ("Acacia Wood", "with a table and four folding chairs"),
            ("Rattan Corner Sofa", "with weatherproof cushions and a glass-topped table"),
        ], ["Perfect for summer dining outdoors.",
            "Turns your patio into an outdoor living room."]),
        ("Barbecue", (79, 599), [
            ("Charcoal Kettle", "with a lid thermometer and an ash catcher"),
            ("Gas", "with three burners and a side shelf"),
        ], ["Ready for summer cookouts.", "Grill burgers, vegetables and steaks for a crowd."]),
    ]),
    "beauty": ("BEA", ["Lumière", "Botanica", "Pure Ritual", "Velvetine"], [
        ("Moisturiser", (15, 69), [
            ("Hydrating", "with hyaluronic acid and ceramides for dry skin"),
            ("Oil-Free", "with niacinamide for oily and blemish-prone skin"),
            ("SPF 30 Day", "with broad-spectrum sun protection in a lightweight lotion"),
        ], ["Leaves skin soft and smooth.", "Suitable for daily morning and evening use."]),
        ("Serum", (19, 89), [
            ("Vitamin C", "that brightens dull skin and evens out tone"),
            ("Retinol", "that smooths fine lines overnight"),
        ], ["A concentrated boost for your skincare routine.",
            "Visible results within a few weeks."]),
        ("Shampoo", (9, 35), [
            ("Sulphate-Free", "with argan oil for colour-treated hair"),
            ("Anti-Dandruff", "with zinc pyrithione to soothe a flaky scalp"),
        ], ["Leaves hair clean, shiny and manageable.", "Gentle enough for daily washing."]),
        ("Lipstick", (12, 39), [
            ("Matte", "in a long-wearing red that doesn't dry out lips"),
            ("Tinted Balm", "with shea butter and a sheer wash of colour"),
        ], ["Adds a pop of colour to any look.", "A handbag essential."]),
        ("Perfume", (39, 149), [
            ("Floral", "with notes of jasmine, rose and white musk"),
            ("Woody", "with notes of cedar, vetiver and amber"),
        ], ["A signature scent for day and evening.", "An elegant gift for someone special."]),
        ("Hair Dryer", (39, 299), [
            ("Ionic", "with a diffuser and concentrator nozzle that reduces frizz"),
            ("Travel", "with a folding handle and dual voltage"),
        ], ["Dries hair quickly without heat damage.", "Salon results at home."]),
        ("Nail Polish Set", (15, 39), [
            ("Gel-Effect", "with six glossy shades and a top coat"),
        ], ["A manicure that lasts for days.",
            "Everything you need for salon-style nails at home."]),
        ("Face Mask", (9, 39), [
            ("Clay", "with kaolin and charcoal to draw out impurities"),
            ("Sheet", "in a pack of ten soaked in soothing aloe and cucumber"),
        ], ["A spa night in a jar.", "Leaves skin refreshed and glowing."]),
        ("Sunscreen", (12, 35), [
            ("Mineral SPF 50", "with zinc oxide that is reef-safe and gentle on sensitive skin"),
            ("Sport SPF 50", "that stays put through sweat and water for 80 minutes"),
        ], ["Protects skin on sunny days outdoors.", "Essential for beach holidays and hikes."]),
        ("Electric Toothbrush", (39, 149), [
            ("Sonic", "with five cleaning modes and a pressure sensor"),
        ], ["Cleaner teeth and healthier gums.", "Recommended by dentists."]),
        ("Body Wash", (7, 24), [
            ("Shea Butter", "that cleanses without stripping dry skin"),
            ("Eucalyptus", "with an invigorating, spa-like scent"),
        ], ["Turns every shower into a treat.", "Leaves skin soft and fresh."]),
        ("Makeup Brush Set", (19, 69), [
            ("Vegan", "of twelve soft synthetic brushes in a travel roll"),
        ], ["Everything you need for a flawless finish.",
            "A great starter set for makeup lovers."]),
        ("Hand Cream", (8, 29), [
            ("Intensive Repair", "with glycerine and almond oil for cracked winter hands"),
        ], ["Keeps hands soft all day.", "Small enough for any bag."]),
        ("Beard Trimmer", (29, 99), [
            ("Cordless", "with twenty length settings and a waterproof body"),
        ], ["Keeps your beard sharp and tidy.", "Precise grooming at home."]),
    ]),
    "sports": ("SPO", ["Apexfit", "Ridgeway", "Velocity", "Ironclad"], [
        ("Yoga Mat", (25, 99), [
            ("Non-Slip", "with a grippy natural rubber surface and alignment lines"),
            ("Extra-Thick", "with 12 mm of cushioning that protects knees and wrists"),
        ], ["Perfect for yoga, pilates and stretching.", "Rolls up easily for class or travel."]),
        ("Dumbbells", (39, 299), [
            ("Adjustable", "that change from 2 to 24 kg with the turn of a dial"),
            ("Hex Rubber", "in pairs with knurled chrome handles"),
        ], ["Build strength in your home gym.", "Compact equipment for full-body workouts."]),
        ("Tent", (79, 449), [
            ("Two-Person Backpacking", "that weighs just 1.4 kg with a waterproof fly"),
            ("Six-Person Family", "with two rooms and a covered porch"),
        ], ["Ready for weekend camping adventures.", "Sets up in minutes at the campsite."]),
        ("Sleeping Bag", (49, 249), [
            ("Three-Season", "rated to minus five degrees with synthetic fill"),
            ("Down Mummy", "that packs small and is rated for winter camping"),
        ], ["Warm nights under the stars.", "A cosy essential for camping and festivals."]),
        ("Bicycle Helmet", (39, 149), [
            ("Road", "with 18 vents and a low-friction safety liner"),
            ("Kids'", "with a fun dinosaur-spike design and an adjustable dial fit"),
        ], ["Safety on every ride.", "Lightweight protection for cyclists."]),
        ("Football", (15, 49), [
            ("Match", "with a thermally bonded cover for a true flight"),
        ], ["Ready for the pitch or the park.", "Great for training and casual kickabouts."]),
        ("Tennis Racket", (49, 229), [
            ("Graphite", "with a large sweet spot for power and control"),
        ], ["Suits beginners and club players alike.", "Take your game to the next level."]),
        ("Water Bottle", (15, 45), [
            ("Insulated Steel", "that keeps drinks cold for 24 hours or hot for 12"),
            ("Collapsible", "in soft silicone that folds flat when empty"),
        ], ["Stay hydrated at the gym or on the trail.", "Leak-proof and ready for adventures."]),
        ("Hiking Backpack", (59, 229), [
            ("30-Litre", "with a ventilated back panel and a hydration sleeve"),
            ("60-Litre", "with an adjustable harness and a built-in rain cover"),
        ], ["Carries everything you need on the trail.", "Comfortable on multi-day treks."]),
        ("Resistance Bands", (12, 39), [
            ("Loop", "in a set of five strengths with a carry bag"),
        ], ["A full workout you can pack anywhere.",
            "Great for rehab, stretching and strength training."]),
        ("Running Belt", (15, 35), [
            ("Bounce-Free", "with room for a phone, keys and energy gels"),
        ], ["Carry essentials hands-free on long runs.", "Stays put on every stride."]),
        ("Climbing Shoes", (69, 159), [
            ("Velcro", "with sticky rubber and a downturned toe for bouldering"),
        ], ["Grips tiny holds on the wall.", "Made for indoor and outdoor climbing."]),
        ("Basketball", (19, 59), [
            ("Composite Leather", "with deep channels for a confident grip"),
        ], ["Built for indoor and outdoor courts.", "Great for pickup games."]),
        ("Trekking Poles", (39, 129), [
            ("Carbon", "that collapse to 60 cm and lock with quick clamps"),
        ], ["Takes strain off knees on steep descents.", "Steady footing on rough trails."]),
        ("Swimming Goggles", (12, 39), [
            ("Anti-Fog", "with UV-protective lenses and a split strap"),
        ], ["Clear vision lap after lap.", "Comfortable for pool and open-water swimming."]),
        ("Kayak", (299, 899), [
            ("Inflatable Two-Person", "with paddles, a pump and a carry bag"),
        ], ["Explore lakes and calm rivers.", "Packs into a car boot for weekend trips."]),
    ]),
    "home decor": ("HOM", ["Nordhaus", "Willow & Wren", "Casa Luz", "Ashgrove"], [
        ("Throw Blanket", (29, 119), [
            ("Chunky Knit", "hand-knitted from thick merino yarn"),
            ("Faux Fur", "that is silky soft on one side and sherpa on the other"),
        ], ["Adds warmth and texture to a sofa or bed.", "Perfect for cosy nights in."]),
        ("Table Lamp", (39, 179), [
            ("Ceramic", "with a glazed base and a linen drum shade"),
            ("Brass Mushroom", "that casts a soft, warm glow"),
        ], ["Creates a warm ambience in any room.", "A stylish touch for a bedside or desk."]),
        ("Scented Candle", (15, 49), [
            ("Soy Wax", "with notes of fig, cedarwood and amber"),
            ("Three-Wick", "with a fresh linen and lavender fragrance"),
        ], ["Fills the room with a calming scent.", "A thoughtful housewarming gift."]),
        ("Wall Art", (29, 199), [
            ("Framed Botanical Print", "with vintage illustrations of ferns and wildflowers"),
            ("Abstract Canvas", "in warm earthy tones with a textured finish"),
        ], ["Brings personality to a bare wall.", "Ready to hang in the living room or hallway."]),
        ("Rug", (79, 499), [
            ("Hand-Woven Jute", "with a natural texture and a chunky braided weave"),
            ("Moroccan Shag", "in thick cream wool with a diamond pattern"),
        ], ["Anchors a living room or bedroom.", "Soft underfoot and easy to style."]),
        ("Cushion Cover", (15, 45), [
            ("Velvet", "in a rich jewel tone with a hidden zip"),
            ("Linen", "with tassel trims in a relaxed, natural style"),
        ], ["An easy way to refresh your sofa.", "Adds colour to a bed or armchair."]),
        ("Mirror", (59, 249), [
            ("Round Arched", "with a thin brushed-gold frame"),
            ("Full-Length", "with a black metal frame that leans or hangs"),
        ], ["Makes small rooms feel bigger and brighter.", "A statement piece for the hallway."]),
        ("Vase", (19, 89), [
            ("Hand-Blown Glass", "in a smoky amber tint"),
            ("Stoneware", "with a speckled matte glaze"),
        ], ["Beautiful with fresh or dried flowers.", "A simple way to style a shelf."]),
        ("Artificial Plant", (25, 129), [
            ("Fiddle-Leaf Fig", "that stands 150 cm tall in a woven basket"),
            ("Trailing Pothos", "that needs no watering and never wilts"),
        ], ["Greenery without the upkeep.", "Brightens corners that get no sunlight."]),
        ("Curtains", (35, 129), [
            ("Blackout", "that block light and keep rooms warm in winter"),
            ("Sheer Linen", "that filter daylight softly"),
        ], ["Frames your windows beautifully.", "A quick way to transform a room."]),
        ("Wall Clock", (25, 99), [
            ("Silent", "with a sweep movement and a minimalist oak face"),
        ], ["Keeps time without any ticking.", "A handsome focal point for a kitchen wall."]),
        ("Photo Frame", (12, 49), [
            ("Gallery", "in a set of six black frames for a wall collage"),
        ], ["Shows off your favourite memories.", "A lovely gift for friends and family."]),
        ("Bookshelf", (89, 299), [
            ("Ladder", "in solid oak with five graduated shelves"),
        ], ["Displays books, plants and keepsakes.",
            "Adds storage without taking up floor space."]),
        ("Bedding Set", (49, 199), [
            ("Linen Duvet", "in stone-washed French linen with two pillowcases"),
            ("Cotton Percale", "with a crisp, cool hotel-style finish"),
        ], ["Makes your bed feel like a boutique hotel.",
            "Soft, breathable comfort for every season."]),
    ]),
    "pets": ("PET", ["Pawsome", "Whisker & Tail", "Barkley", "Happy Hound"], [
        ("Dog Bed", (39, 149), [
            ("Orthopaedic", "with memory foam that supports older dogs' joints"),
            ("Donut", "with raised fluffy rims that anxious pups love to curl into"),
        ], ["A comfortable place for your dog to sleep.",
            "Machine-washable cover for easy cleaning."]),
        ("Cat Tree", (49, 199), [
            ("Multi-Level", "with scratching posts, a hammock and a cosy condo"),
        ], ["Keeps indoor cats active and entertained.", "Saves your sofa from scratches."]),
        ("Dog Leash", (15, 45), [
            ("Reflective", "with a padded handle and reflective stitching for night walks"),
            ("Retractable", "that extends to five metres with a one-button brake"),
        ], ["Safe, comfortable daily walks.", "Built for strong pullers."]),
        ("", (8, 29), [
            ("Rubber Chew Toy", "made from tough natural rubber for heavy chewers"),
            ("Feather Wand Cat Toy", "with catnip-filled feathers on a flexible rod"),
            ("Treat Puzzle Dog Toy", "that hides treats to keep clever dogs busy"),
        ], ["Beats boredom and keeps pets active.", "Hours of play for your furry friend."]),
        ("Automatic Feeder", (59, 149), [
            ("Smart", "with app-controlled portions and a built-in camera"),
        ], ["Feeds your pet on schedule while you're away.", "Never miss a mealtime."]),
        ("Grooming Brush", (12, 35), [
            ("Deshedding", "that removes loose undercoat hair"),
            ("Self-Cleaning Slicker", "with a button that retracts the bristles"),
        ], ["Keeps coats shiny and tangle-free.", "Less fur on your furniture."]),
        ("Dog Raincoat", (25, 59), [
            ("Hooded", "with a waterproof shell and a reflective strip"),
        ], ["Keeps your dog dry on rainy walks.", "Easy to put on with velcro fastenings."]),
        ("Cat Litter Box", (25, 149), [
            ("Hooded", "with a carbon filter and a swing door"),
            ("Self-Cleaning", "that rakes away waste automatically"),
        ], ["Keeps odours under control.", "Easy to clean and cat-approved."]),
        ("Dog Collar", (12, 39), [
            ("Leather", "with a solid brass buckle and a name plate"),
            ("LED", "that glows in three modes for dark evenings"),
        ], ["Comfortable for everyday wear.", "Keeps your dog visible and stylish."]),
        ("Pet Carrier", (35, 99), [
            ("Airline-Approved", "with mesh windows and a fleece pad"),
        ], ["Safe, stress-free travel for cats and small dogs.",
            "Fits under most aeroplane seats."]),
        ("Aquarium", (49, 249), [
            ("60-Litre Starter", "with an LED light, filter and heater"),
        ], ["Everything you need to start keeping fish.", "A calming feature for any room."]),
        ("Dog Treats", (6, 19), [
            ("Grain-Free Training", "in small, soft bites made from real chicken"),
            ("Dental Chew", "that clean teeth and freshen breath"),
        ], ["A tasty reward for good behaviour.", "Dogs go wild for them."]),
    ]),
    "office": ("OFF", ["Deskwise", "Inkwell", "Paperlane", "Ergonomix"], [
        ("Office Chair", (149, 599), [
            ("Ergonomic Mesh", "with adjustable lumbar support and 4D armrests"),
            ("Leather Executive", "with a high back and padded headrest"),
        ], ["Comfortable through long working days.", "Supports good posture at your desk."]),
        ("Standing Desk", (249, 699), [
            ("Electric", "with dual motors and four memory height presets"),
        ], ["Switch between sitting and standing at the touch of a button.",
            "A healthier way to work from home."]),
        ("Notebook", (8, 29), [
            ("Dotted A5", "with 160 pages of thick, fountain-pen-friendly paper"),
            ("Leather-Bound", "with a refillable journal and a wrap-around tie"),
        ], ["Perfect for bullet journals, sketches and notes.",
            "A lovely place to plan your week."]),
        ("Fountain Pen", (19, 149), [
            ("Steel-Nib", "with a piston filler and a demonstrator barrel"),
        ], ["A smooth writing experience every day.", "A classic gift for writers and students."]),
        ("Desk Lamp", (29, 119), [
            ("LED Architect", "with an adjustable arm and five colour temperatures"),
        ], ["Reduces eye strain during late-night work.", "Bright, focused light for reading."]),
        ("Monitor Arm", (39, 149), [
            ("Gas-Spring", "that holds a 32-inch screen and clamps to the desk"),
        ], ["Frees up desk space and improves posture.",
            "Position your screen exactly where you want it."]),
        ("Backpack", (49, 149), [
            ("Laptop", "with a padded 16-inch sleeve and a luggage pass-through"),
            ("Roll-Top Commuter", "in waterproof tarpaulin for cycling to work"),
        ], ["Carries your tech to the office and back.", "Organised storage for daily commuting."]),
        ("Planner", (15, 39), [
            ("Weekly", "with monthly overviews, habit trackers and goal pages"),
        ], ["Keeps your year organised.", "Plan work and life in one place."]),
        ("Webcam", (49, 199), [
            ("1080p", "with autofocus and a built-in privacy shutter"),
        ], ["Look sharp on video calls.", "Clear video for meetings and streaming."]),
        ("Desk Organiser", (15, 49), [
            ("Bamboo", "with trays for pens, notes and a phone stand"),
        ], ["Tidies away clutter from your workspace.", "Keeps essentials within reach."]),
        ("Ergonomic Mouse", (29, 99), [
            ("Vertical", "that holds your wrist in a natural handshake position"),
            ("Wireless Silent", "with quiet clicks and a rechargeable battery"),
        ], ["Reduces strain during long days at the computer.", "Comfortable, precise control."]),
        ("Label Maker", (29, 79), [
            ("Bluetooth", "that prints labels from your phone"),
        ], ["Organises files, shelves and cables.", "Makes tidying up satisfying."]),
        ("Paper Shredder", (49, 179), [
            ("Cross-Cut", "that shreds twelve sheets at once and handles credit cards"),
        ], ["Keeps personal documents secure.", "Quiet enough for a home office."]),
    ]),
}


# Words that keep their capitals inside a sentence (proper nouns); words with capitals
# after the first letter or with digits (SPF, T-Rex, USB-C, A5) are kept as well.
PROPER = {"Japanese", "German", "Moroccan", "Christmas", "Dutch", "Chelsea", "Bluetooth", "Oxford"}


def _sentence_case(words: str) -> str:
    """'Oil-Free Moisturiser' -> 'oil-free moisturiser'; 'SPF 30' stays, 'T-Shirt' -> 'T-shirt'."""

    def part(p: str) -> str:
        keep = (p in PROPER or len(p) == 1 or any(c.isdigit() for c in p)
                or any(c.isupper() for c in p[1:]))
        return p if keep else p.lower()

    return " ".join("-".join(part(p) for p in w.split("-")) for w in words.split())


def build(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    items: list[dict] = []
    for category, (prefix, brands, types) in CATALOG.items():
        n = 0
        for noun, (low, high), variants, uses in types:
            for variant, feature in variants:
                n += 1
                brand = rng.choice(brands)
                # "Kids'" goes first in a name: "Kids' Light-Up Shoes", not "Light-Up Kids' Shoes".
                if noun.startswith("Kids' "):
                    rest = noun.removeprefix("Kids' ")
                    title = f"Kids' {variant} {rest}"
                    head = f"kids' {_sentence_case(variant)} {_sentence_case(rest)}"
                else:
                    title = f"{variant} {noun}".strip()
                    head = _sentence_case(title)
                description = f"{head[0].upper()}{head[1:]} {feature}. {rng.choice(uses)}"
                # Prices end in .99 like most retail listings.
                price = rng.randint(low, high) * 100 - 1
                items.append({"sku": f"{prefix}-{n:03d}", "name": f"{brand} {title}",
                              "category": category, "price": price, "description": description})
    return items


def main() -> None:
    out = Path(__file__).resolve().parent / "catalog.jsonl"
    items = build()
    with out.open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    print(f"wrote {len(items)} products to {out}")


if __name__ == "__main__":
    main()
